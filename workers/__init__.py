"""EEGS workers."""
