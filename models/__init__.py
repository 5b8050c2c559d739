"""EEGS models."""
