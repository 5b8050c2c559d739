"""Brain-model speed (multiple of real time) and clock drift, 64 ch x 1000 Hz.

Speed: the streaming process's own code (``workers.brain_model.BrainModelStream``:
marker handling, image loading and featurising, background and response rendering,
pushing 20 ms chunks to a real LSL outlet) streams ``--minutes`` of EEG unpaced,
with one stimulus-onset marker per second, each naming an image file on disk (the
feature cache is cleared before every marker, so every image is read and decoded).
A receiver thread pulls every sample through a real LSL inlet on loopback.
``realtime_factor`` = simulated seconds / wall-clock seconds of the streaming loop.
``samples_sent`` / ``samples_received`` count the unpaced run. It reports no drift:
unpaced samples are not tied to any clock, and comparing their timestamps with the
formula that made them (t0 + k / sfreq) cannot fail.

Paced: a run of ``--paced-s`` seconds pushes each chunk when its last sample is due.
The receiver notes its own ``pylsl.local_clock()`` when each chunk arrives, next to
the chunk's last sample timestamp. ``drift_ms_per_hour`` is the slope of (sample
timestamp - arrival clock) over the run, fitted through the smallest lag of each of
``drift_fit.windows`` windows (arrival jitter only ever adds lag), scaled to one
hour; positive: the stream's timestamps gain on the receiver's clock.
``drift_fit`` = {``span_s``: receiver seconds fitted, ``windows``, ``stderr_ms_per_hour``:
scatter of the window minima about the line}. When the paced run is too short (or
absent) both are null and ``drift_note`` says why. ``paced_arrival_lag_ms``: how long
after its timestamp each sample arrives; ``paced_samples_received``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MIN_DRIFT_SPAN_S = 2.0  # receiver seconds below which no drift is estimated
DRIFT_WINDOWS = 10


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("--minutes", type=float, default=10.0, help="simulated stream length")
    p.add_argument("--channels", type=int, default=64, help="1..64 standard channels")
    p.add_argument("--sfreq", type=float, default=1000.0)
    p.add_argument("--chunk", type=float, default=0.02, help="seconds per LSL chunk")
    p.add_argument("--stimulus-period", type=float, default=1.0, help="seconds per stimulus")
    p.add_argument("--images", type=int, default=60, help="distinct image files")
    p.add_argument("--image-px", type=int, default=256, help="side of the PNG images")
    p.add_argument(
        "--paced-s", type=float, default=60.0,
        help=f"paced run length, drift needs >= {MIN_DRIFT_SPAN_S:g} s (0: none)",
    )  # fmt: skip


def clock_drift_fit(
    sample_times: np.ndarray,
    arrival_times: np.ndarray,
    n_windows: int = DRIFT_WINDOWS,
    min_span_s: float = MIN_DRIFT_SPAN_S,
) -> dict | None:
    """Drift of a stream's timestamps against the receiver's clock, or None if too short.

    Parameters
    ----------
    sample_times : array
        LSL timestamp of a sample of each received chunk (e.g. its last).
    arrival_times : array
        The receiver's ``pylsl.local_clock()`` when that chunk arrived.
    n_windows, min_span_s :
        The arrival span is cut into ``n_windows`` equal windows; fewer than 4 windows
        with data, or a span under ``min_span_s`` seconds, gives None.

    Returns
    -------
    dict or None
        ``drift_ms_per_hour`` (slope of sample time - arrival time per receiver
        hour; positive: the timestamps gain on the receiver), ``stderr_ms_per_hour``,
        ``span_s`` and ``windows``.

    Notes
    -----
    Transport and scheduling only ever delay an arrival, so the lag's lower envelope
    is what follows the clocks: the fit goes through the smallest lag of each window
    (Theil-Sen, the median of pairwise slopes, so that one stalled window cannot tip
    it). A plain fit of all chunks would follow the jitter instead.
    """
    t = np.asarray(arrival_times, dtype=np.float64)
    lag = t - np.asarray(sample_times, dtype=np.float64)
    if t.size < 4 or t.size != lag.size:
        return None
    span = float(t.max() - t.min())
    if span < min_span_s:
        return None
    edges = np.linspace(t.min(), t.max(), n_windows + 1)
    which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, n_windows - 1)
    xs, ys = [], []
    for w in range(n_windows):
        idx = np.flatnonzero(which == w)
        if idx.size:
            k = idx[np.argmin(lag[idx])]
            xs.append(t[k])
            ys.append(lag[k])
    if len(xs) < 4:
        return None
    x, y = np.asarray(xs), np.asarray(ys)
    i, j = np.triu_indices(x.size, 1)
    slope = float(np.median((y[j] - y[i]) / (x[j] - x[i])))
    resid = y - slope * x
    resid -= np.median(resid)
    sxx = float(np.sum((x - x.mean()) ** 2))
    stderr = float(np.sqrt(np.sum(resid**2) / (x.size - 2) / sxx))
    hour_ms = 3600.0 * 1e3
    return {
        "drift_ms_per_hour": round(-slope * hour_ms, 3) + 0.0,  # never -0.0
        "stderr_ms_per_hour": round(stderr * hour_ms, 3),
        "span_s": round(span, 3),
        "windows": int(x.size),
    }


def clock_drift_ms_per_hour(
    sample_times: np.ndarray, arrival_times: np.ndarray, **kwargs
) -> float | None:
    """Drift (ms per hour) of the timestamps against the receiver's clock, or None.

    See :func:`clock_drift_fit`; None when the run is too short to tell, so that a
    number is only reported where it could have come out otherwise.
    """
    fit = clock_drift_fit(sample_times, arrival_times, **kwargs)
    return None if fit is None else fit["drift_ms_per_hour"]


def _make_images(folder: Path, n: int, px: int) -> list[Path]:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = Image.new("RGB", (px, px), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = rng.uniform(0, px, 2)
            w, h = rng.uniform(px / 16, px / 2, 2)
            draw.ellipse(
                [x0, y0, x0 + w, y0 + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3))
            )
        noise = rng.normal(0, 12, (px, px, 3))
        arr = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        path = folder / f"image-{i:03d}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


class _Receiver(threading.Thread):
    """Pulls every sample of a stream and keeps the timestamps.

    With ``arrivals`` it also notes, per chunk, the receiver's clock at arrival, the
    chunk's last timestamp and that sample's index: what the drift is measured from.
    """

    def __init__(self, name: str, n_total: int, n_ch: int, arrivals: bool = False) -> None:
        super().__init__(daemon=True)
        import pylsl

        info = pylsl.resolve_byprop("name", name, 1, 10.0)
        if not info:
            raise RuntimeError(f"benchmark stream '{name}' not found")
        self.inlet = pylsl.StreamInlet(info[0], max_buflen=600, max_chunklen=0)
        self.inlet.open_stream(timeout=10.0)
        self.n_total = n_total
        self.stamps = np.empty(n_total)
        self.arrived = np.empty(n_total) if arrivals else None
        self.chunks: list[tuple[float, float, int]] = []  # (arrival, last stamp, index)
        self.n = 0
        self._buf = np.empty((4096, n_ch), dtype=np.float32)
        self._min = 1 if arrivals else None  # arrival times need prompt pulls
        self.stop = threading.Event()

    def run(self) -> None:
        import pylsl

        while self.n < self.n_total and not self.stop.is_set():
            _, ts = self.inlet.pull_chunk(
                timeout=0.2, max_samples=4096, dest_obj=self._buf, min_samples=self._min
            )
            k = len(ts)
            if not k:
                continue
            now = pylsl.local_clock()
            k = min(k, self.n_total - self.n)
            self.stamps[self.n : self.n + k] = ts[:k]
            if self.arrived is not None:
                self.arrived[self.n : self.n + k] = now
                self.chunks.append((now, float(ts[k - 1]), self.n + k - 1))
            self.n += k

    def drift(self) -> dict:
        """The drift figures of the chunks received so far (null, with a note, if too few)."""
        if not self.chunks:
            return {"drift_ms_per_hour": None, "drift_fit": None,
                    "drift_note": "no chunk arrival was recorded"}  # fmt: skip
        arrival, stamp, _ = (np.asarray(c) for c in zip(*self.chunks, strict=True))
        fit = clock_drift_fit(stamp, arrival)
        if fit is None:
            return {
                "drift_ms_per_hour": None, "drift_fit": None,
                "drift_note": f"paced run too short to estimate drift: chunk arrivals span "
                f"{float(arrival.max() - arrival.min()):.2f} s of the receiver's clock, "
                f"needs >= {MIN_DRIFT_SPAN_S:g} s in >= 4 windows",
            }  # fmt: skip
        drift = fit.pop("drift_ms_per_hour")
        return {"drift_ms_per_hour": drift, "drift_fit": fit}


def _stream(args: argparse.Namespace, name: str, seconds: float, paced: bool,
            images: list[Path]) -> dict:  # fmt: skip
    from experiment_protocols.brain_model import BrainModelSettings
    from models.montage import STANDARD_64
    from workers.brain_model import BrainModelConfig, BrainModelStream
    from workers.lsl_clock import SampleClock

    settings = BrainModelSettings(
        sfreq=args.sfreq, chunk_s=args.chunk, noise_seed=0,
        channels=STANDARD_64[: args.channels],
    )  # fmt: skip
    stream = BrainModelStream(BrainModelConfig(settings, name=name, markers=f"{name}-none"))
    n_total = int(round(seconds * args.sfreq))
    rx = _Receiver(name, n_total, args.channels, arrivals=paced)
    rx.start()
    stream.outlet.wait_for_consumers(10.0)
    fs, chunk = args.sfreq, stream.chunk
    stream.clock = SampleClock(fs, lead_s=0.1 if paced else 0.0)
    period = int(round(args.stimulus_period * fs))
    next_onset, k_img = period // 2, 0
    t_start = time.perf_counter()
    for first in range(0, n_total, chunk):
        n = min(chunk, n_total - first)
        if paced:
            stream.clock.wait_until(float(stream.clock.time_of(first + n - 1)))
        while next_onset < first + n:
            stream.model.clear_cache()
            marker = {"event": "stimulus_onset", "trial": k_img,
                      "image": str(images[k_img % len(images)])}  # fmt: skip
            stream.handle_marker(json.dumps(marker), float(stream.clock.time_of(next_onset)))
            next_onset += period
            k_img += 1
        stream.step(first, n, paced=False)
    wall = time.perf_counter() - t_start
    rx.join(60.0)
    rx.stop.set()
    rx.inlet.close_stream()
    stream.close()
    ts = rx.stamps[: rx.n]
    out = {"wall_s": wall, "n_sent": n_total, "n_received": rx.n, "stimuli": k_img,
           "responses": stream.stats.responses}  # fmt: skip
    if paced and rx.arrived is not None and rx.n:
        lag = (rx.arrived[: rx.n] - ts) * 1e3
        out["arrival_lag_ms"] = {
            "median": round(float(np.median(lag)), 3),
            "p95": round(float(np.percentile(lag, 95)), 3),
            "max": round(float(lag.max()), 3),
        }
    if paced:
        out.update(rx.drift())
    return out


def run(args: argparse.Namespace) -> dict:
    """Stream unpaced (speed), then paced (drift against the receiver's clock, lag)."""
    from PIL import Image

    from workers.brain_model import single_threaded_blas

    logging.getLogger("eegs.brain_model").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="eegs-bench-bm-") as tmp:
        images = _make_images(Path(tmp), args.images, args.image_px)
        load_ms = []
        for path in images[:20]:
            t = time.perf_counter()
            with Image.open(path) as img:
                img.convert("RGB")
            load_ms.append((time.perf_counter() - t) * 1e3)
        name = f"bench-bm-{os.getpid()}"
        seconds = args.minutes * 60
        with single_threaded_blas():  # as the streaming process runs
            fast = _stream(args, name, seconds, paced=False, images=images)
            paced = (
                _stream(args, f"{name}-paced", args.paced_s, paced=True, images=images)
                if args.paced_s > 0
                else None
            )
    result = {
        "benchmark": "brain-model",
        "stream": {"channels": args.channels, "sfreq": args.sfreq, "chunk_s": args.chunk},
        "simulated_s": seconds,
        "stimuli": fast["stimuli"],
        "image_px": args.image_px,
        "image_decode_ms_median": round(float(np.median(load_ms)), 3),
        "realtime_factor": round(seconds / fast["wall_s"], 2),
        "samples_sent": fast["n_sent"],
        "samples_received": fast["n_received"],
    }
    if paced is None:
        result.update(drift_ms_per_hour=None, drift_fit=None,
                      drift_note="no paced run (--paced-s 0): drift not measured")  # fmt: skip
    else:
        result["paced_s"] = args.paced_s
        result.update({k: paced[k] for k in ("drift_ms_per_hour", "drift_fit")})
        if "drift_note" in paced:
            result["drift_note"] = paced["drift_note"]
        result["paced_arrival_lag_ms"] = paced.get("arrival_lag_ms")
        result["paced_samples_received"] = paced["n_received"]
    return result
