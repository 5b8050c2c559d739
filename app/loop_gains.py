"""The closed loop's two gains, read from the brain model's hidden affect after a run.

One definition for the offline population bench (``eegs bench loop``) and the live pilot
(``summary.json``, ``eegs bench pilots``), so that the two figures mean the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CHOSEN = ("child", "nearest")  # images the loop chose; "random" ones are shown beside them


def loop_gains(valence: np.ndarray, rounds: np.ndarray, kinds: Sequence[str]) -> dict[str, Any]:
    """``curve`` (mean per round), gain (a) and gain (b) of one closed loop.

    (a): mean hidden valence of the last two rounds minus round 0's (random pool images);
    (b): from round 1 on, the images the loop chose minus the random images shown beside
    them (None when a side is empty).
    """
    valence, rounds = np.asarray(valence, dtype=np.float64), np.asarray(rounds)
    kinds_a = np.asarray(list(kinds))
    curve = [float(valence[rounds == r].mean()) for r in np.unique(rounds)]
    later = rounds >= 1
    chosen = later & np.isin(kinds_a, CHOSEN)
    beside = later & (kinds_a == "random")
    gain_b = None
    if chosen.any() and beside.any():
        gain_b = round(float(valence[chosen].mean() - valence[beside].mean()), 4)
    return {
        "curve": [round(v, 4) for v in curve],
        "gain_a": gain_a_at(curve, len(curve) - 1),
        "gain_b": gain_b,
    }


def gain_a_at(curve: Sequence[float], rounds: int) -> float:
    """Gain (a) of the same session had it stopped after ``rounds`` closed-loop rounds.

    Rounds are cheap next to the calibration: one long run read at several lengths tells a
    lab how many rounds its protocol needs, without a run per length.
    """
    if not 0 <= rounds < len(curve):  # 0: round 0 alone, nothing gained yet
        raise ValueError(f"rounds must be 0..{len(curve) - 1} for a curve of {len(curve)}")
    return round(float(np.mean(curve[: rounds + 1][-2:]) - curve[0]), 4)
