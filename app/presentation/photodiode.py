"""The photodiode patch on screen, and finding its light in a recorded channel.

A photodiode taped over a corner of the display sees the patch turn white on the
very refresh that shows a stimulus; its signal, recorded by the amplifier beside the
EEG, gives the true light onset of every marker. :func:`light_offsets` measures the
marker-to-light delay from such a channel (no PsychoPy needed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from experiment_protocols.presentation import Photodiode


class PhotodiodePatch:
    """A square in one corner: white while a stimulus is on, black otherwise."""

    def __init__(self, win: Any, cfg: Photodiode) -> None:
        from psychopy import visual

        self.enabled = cfg.enabled
        w, h = win.size
        s = cfg.size_px
        x = -w / 2 + s / 2 if cfg.corner.endswith("left") else w / 2 - s / 2
        y = -h / 2 + s / 2 if cfg.corner.startswith("bottom") else h / 2 - s / 2
        common = {"width": s, "height": s, "pos": (x, y), "units": "pix", "lineWidth": 0}
        self._on = visual.Rect(win, fillColor="white", lineColor="white", **common)
        self._off = visual.Rect(win, fillColor="black", lineColor="black", **common)

    def draw(self, on: bool) -> None:
        """Draw the patch (nothing when the protocol turns it off)."""
        if self.enabled:
            (self._on if on else self._off).draw()


def light_offsets(
    times: np.ndarray,
    values: np.ndarray,
    marker_times: np.ndarray,
    *,
    max_lag_s: float,
    search_before_s: float,
) -> np.ndarray:
    """Delay (s) from each marker to the light's rising edge; NaN where none is found.

    The threshold is halfway between the dark and light levels (5th and 95th
    percentiles). The edge time is interpolated linearly between the two samples that
    straddle it, so a step between samples is placed at their midpoint: unbiased when
    the true step falls anywhere between them.

    Parameters
    ----------
    times, values : array, shape (n_samples,)
        The photodiode channel and its LSL timestamps (increasing).
    marker_times : array, shape (n_markers,)
        LSL timestamps of the flash markers.
    max_lag_s : float
        Light later than this after its marker is not counted.
    search_before_s : float
        Light this long before a marker still counts (a late marker).
    """
    times = np.asarray(times, np.float64)
    values = np.asarray(values, np.float64)
    if times.size < 2:
        raise ValueError("the photodiode channel holds no samples")
    lo, hi = np.percentile(values, [5, 95])
    if not hi - lo > 1e-12 * max(1.0, abs(hi)):
        raise ValueError(
            f"the photodiode channel is flat ({lo:g} to {hi:g}): is the patch on and the "
            "sensor over it?"
        )
    threshold = (lo + hi) / 2
    above = values > threshold
    rising = np.flatnonzero(~above[:-1] & above[1:]) + 1  # first sample above
    edge_t = times[rising - 1] + (threshold - values[rising - 1]) / (
        values[rising] - values[rising - 1]
    ) * (times[rising] - times[rising - 1])
    out = np.full(len(marker_times), np.nan)
    for k, m in enumerate(np.asarray(marker_times, np.float64)):
        j = np.searchsorted(edge_t, m - search_before_s)
        if j < edge_t.size and edge_t[j] <= m + max_lag_s:
            out[k] = edge_t[j] - m
    return out


def offset_report(offsets_s: np.ndarray, n_flashes: int) -> dict[str, Any]:
    """The timing-check summary: marker-to-light offset statistics and the correction.

    ``correction_ms`` is what to add to a marker's timestamp to get the light onset
    (the mean offset); the SD is the jitter no correction removes.
    """
    found = np.asarray(offsets_s, np.float64)
    found = found[np.isfinite(found)] * 1e3
    if found.size < 2:
        raise ValueError(f"the photodiode saw {found.size} of {n_flashes} flashes")
    return {
        "offset_ms": {
            "mean": round(float(found.mean()), 3),
            "sd": round(float(found.std(ddof=1)), 3),
            "min": round(float(found.min()), 3),
            "max": round(float(found.max()), 3),
        },
        "n_flashes": int(n_flashes),
        "n_detected": int(found.size),
        "correction_ms": round(float(found.mean()), 3),
    }
