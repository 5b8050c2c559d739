"""Figures over seeds or participants: mean, 95 % t-interval, share above zero."""

from __future__ import annotations

import numpy as np


def stats(values) -> dict:
    """Mean, 95% t-interval, share > 0, SD (ddof 1) and n of the values that are not None.

    The interval is None with fewer than two values.
    """
    from scipy.stats import t

    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    n = len(x)
    if n == 0:
        return {"mean": None, "ci95": None, "share_gt_0": None, "sd": None, "n": 0}
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    half = float(t.ppf(0.975, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
    ci = [round(mean - half, 4), round(mean + half, 4)] if n > 1 else None
    return {
        "mean": round(mean, 4),
        "ci95": ci,
        "share_gt_0": round(float((x > 0).mean()), 4),
        "sd": round(sd, 4),
        "n": n,
    }
