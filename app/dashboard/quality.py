"""Per-channel signal quality over the last seconds of raw EEG, for the dashboard.

The acquisition flags each epoch (``workers.acquisition.assess_quality``); the
experimenter also needs to see a channel going bad between epochs, before it costs
trials: flat, line noise, high amplitude and drift, from the same protocol thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Share of the 1-45 Hz power at the line frequency (±1 Hz) above which a channel hums.
LINE_RATIO = 0.5
#: Peak-to-peak of a channel's linear trend over the window above which it drifts, in µV.
DRIFT_UV = 150.0


@dataclass(frozen=True)
class Thresholds:
    """What makes a channel bad (µV; ``line_hz`` 50 or 60)."""

    flat_uv: float = 0.5
    reject_uv: float = 150.0
    line_hz: float = 50.0
    line_ratio: float = LINE_RATIO
    drift_uv: float = DRIFT_UV


def channel_quality(x_uv: np.ndarray, sfreq: float, th: Thresholds) -> list[dict[str, Any]]:
    """Flags and figures of each channel of ``x_uv`` (channels × samples, raw µV).

    Flat: peak-to-peak of the raw signal below ``flat_uv``. Drift: the linear trend
    moves more than ``drift_uv`` over the window. High amplitude: the detrended 1-45 Hz
    signal's robust peak-to-peak (1st to 99th percentile) above ``reject_uv``. Line
    noise: the line frequency's share of the 1-45 Hz power (line band included) above
    ``line_ratio``.
    """
    x = np.asarray(x_uv, dtype=np.float64)
    n = x.shape[1]
    t = np.arange(n) / sfreq
    ptp_raw = np.ptp(x, axis=1) if n else np.zeros(len(x))
    if n < max(8, int(sfreq / 2)):  # under half a second: only flatness means anything
        return [{"ptp_uv": float(p), "flags": ["flat"] if p < th.flat_uv else []} for p in ptp_raw]
    slope, intercept = np.polyfit(t, x.T, 1)
    drift = np.abs(slope) * (t[-1] - t[0])
    resid = x - (slope[:, None] * t + intercept[:, None])
    spec = np.abs(np.fft.rfft(resid * np.hanning(n), axis=1)) ** 2
    freqs = np.fft.rfftfreq(n, 1 / sfreq)
    band = (freqs >= 1) & (freqs <= 45)
    line = np.abs(freqs - th.line_hz) <= 1.0
    total = spec[:, band | line].sum(axis=1) + 1e-12
    line_share = spec[:, line].sum(axis=1) / total
    keep = np.zeros_like(freqs)
    keep[band] = 1.0
    filtered = np.fft.irfft(np.fft.rfft(resid, axis=1) * keep, n=n, axis=1)
    lo, hi = np.percentile(filtered, [1, 99], axis=1)
    amp = hi - lo
    out = []
    for i in range(len(x)):
        flags = []
        if ptp_raw[i] < th.flat_uv:
            flags.append("flat")
        else:
            if line_share[i] > th.line_ratio:
                flags.append("line_noise")
            if amp[i] > th.reject_uv:
                flags.append("high_amplitude")
            if drift[i] > th.drift_uv:
                flags.append("drift")
        out.append(
            {
                "ptp_uv": round(float(ptp_raw[i]), 2),
                "amplitude_uv": round(float(amp[i]), 2),
                "line_share": round(float(line_share[i]), 3),
                "drift_uv": round(float(drift[i]), 2),
                "flags": flags,
            }
        )
    return out
