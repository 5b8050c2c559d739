"""EEG decoders: the ATM-S encoder, its CLIP training and the emotion classifiers."""
