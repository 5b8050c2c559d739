"""Evaluation library: the decoders cross-validated (Table 1), on recordings and the brain model."""
