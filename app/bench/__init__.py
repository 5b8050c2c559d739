"""Benchmarks behind `eegs bench NAME`."""
