"""Channel lists that several models read: the montage, not any one model's.

The rewards (which channels an index averages, which ones ATM-S reads) and the brain
model (which channels it simulates) both name channels; the lists live here so that a
reward never imports the simulator.
"""

from __future__ import annotations

#: The 17 occipito-parietal channels that ATM-S reads.
ATM_CHANNELS: list[str] = [
    "O1", "Oz", "O2", "PO7", "PO3", "POz", "PO4", "PO8",
    "P7", "P5", "P3", "P1", "Pz", "P2", "P4", "P6", "P8",
]  # fmt: skip

#: 64 standard 10-10 positions (the BioSemi-64 layout), including :data:`ATM_CHANNELS`.
STANDARD_64: list[str] = [
    "Fp1", "AF7", "AF3", "F1", "F3", "F5", "F7", "FT7", "FC5", "FC3", "FC1", "C1",
    "C3", "C5", "T7", "TP7", "CP5", "CP3", "CP1", "P1", "P3", "P5", "P7", "P9",
    "PO7", "PO3", "O1", "Iz", "Oz", "POz", "Pz", "CPz", "Fpz", "Fp2", "AF8", "AF4",
    "AFz", "Fz", "F2", "F4", "F6", "F8", "FT8", "FC6", "FC4", "FC2", "FCz", "Cz",
    "C2", "C4", "C6", "T8", "TP8", "CP6", "CP4", "CP2", "P2", "P4", "P6", "P8",
    "P10", "PO8", "PO4", "O2",
]  # fmt: skip
