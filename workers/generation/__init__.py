"""The generation worker (``eegs worker``): one process, its parts one module each."""
