"""Rewards: how one EEG epoch becomes a number in [0, 1] for the generator."""
