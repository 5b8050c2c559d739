"""The black-box brain model: a simulated participant's EEG response and self-report."""
