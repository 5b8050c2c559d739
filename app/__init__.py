"""EEGS app."""
