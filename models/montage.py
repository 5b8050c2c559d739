"""Channel lists that several models read: the montage, not any one model's.

The rewards (which channels an index averages, which ones ATM-S reads) and the brain
model (which channels it simulates) both name channels; the lists live here so that a
reward never imports the simulator.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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


#: Electrode name prefixes of the frontal 10-10 rows (prefrontal, anterior frontal,
#: frontal, fronto-central), where the frontal alpha asymmetry is read.
FRONTAL_PREFIXES = ("Fp", "AF", "F", "FC")
_NAME_NUMBER = re.compile(r"([A-Za-z]+)(\d+)")


def homologous_pairs(
    ch_names: Sequence[str], prefixes: Sequence[str] = FRONTAL_PREFIXES
) -> list[tuple[str, str]]:
    """(left, right) homologous channels of ``ch_names`` in the rows ``prefixes``.

    The 10-20 system's rule: an odd number is over the left hemisphere, the next even
    number with the same prefix is its mirror on the right (F3/F4, AF7/AF8, Fp1/Fp2).
    Names are compared without case; pairs come in the order of their left channel.
    """
    rows = {p.lower() for p in prefixes}
    by_name = {ch.lower(): ch for ch in ch_names}
    pairs = []
    for ch in ch_names:
        m = _NAME_NUMBER.fullmatch(ch)
        if m is None or m.group(1).lower() not in rows or int(m.group(2)) % 2 == 0:
            continue
        right = by_name.get(f"{m.group(1)}{int(m.group(2)) + 1}".lower())
        if right is not None:
            pairs.append((ch, right))
    return pairs
