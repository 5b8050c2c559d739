"""Brain-model speed (multiple of real time) and sample-clock drift, 64 ch x 1000 Hz.

Speed: the streaming process's own code (``workers.brain_model.BrainModelStream``:
marker handling, image loading and featurising, background and response rendering,
pushing 20 ms chunks to a real LSL outlet) streams ``--minutes`` of EEG unpaced,
with one stimulus-onset marker per second, each naming an image file on disk (the
feature cache is cleared before every marker, so every image is read and decoded).
A receiver thread pulls every sample through a real LSL inlet on loopback.
``realtime_factor`` = simulated seconds / wall-clock seconds of the streaming loop.

Drift: the receiver's timestamps against the sample count over the whole stream:
``drift_ms_per_hour`` = |(t_last - t_first) - (n - 1) / sfreq| scaled to one hour;
``max_deviation_ms`` = largest |t_k - (t_first + k / sfreq)|. A paced run of
``--paced-s`` seconds then checks the real-time pacing: how long after its
timestamp each sample arrives (``paced_arrival_lag_ms``).
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("--minutes", type=float, default=10.0, help="simulated stream length")
    p.add_argument("--channels", type=int, default=64, help="1..64 standard channels")
    p.add_argument("--sfreq", type=float, default=1000.0)
    p.add_argument("--chunk", type=float, default=0.02, help="seconds per LSL chunk")
    p.add_argument("--stimulus-period", type=float, default=1.0, help="seconds per stimulus")
    p.add_argument("--images", type=int, default=60, help="distinct image files")
    p.add_argument("--image-px", type=int, default=256, help="side of the PNG images")
    p.add_argument("--paced-s", type=float, default=5.0, help="paced run length (0: none)")


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
    """Pulls every sample of a stream and keeps the timestamps (and arrival times)."""

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
            k = min(k, self.n_total - self.n)
            self.stamps[self.n : self.n + k] = ts[:k]
            if self.arrived is not None:
                self.arrived[self.n : self.n + k] = pylsl.local_clock()
            self.n += k


def _stream(args: argparse.Namespace, name: str, seconds: float, paced: bool,
            images: list[Path]) -> dict:  # fmt: skip
    from experiment_protocols.brain_model import BrainModelSettings
    from models.brain_response import STANDARD_64
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
    if rx.n > 1:
        k = np.arange(rx.n)
        span = ts[-1] - ts[0]
        out["drift_ms_per_hour"] = abs(span - (rx.n - 1) / fs) / (rx.n / fs / 3600) * 1e3
        out["max_deviation_ms"] = float(np.abs(ts - (ts[0] + k / fs)).max() * 1e3)
    if paced and rx.arrived is not None and rx.n:
        lag = (rx.arrived[: rx.n] - ts) * 1e3
        out["arrival_lag_ms"] = {
            "median": round(float(np.median(lag)), 3),
            "p95": round(float(np.percentile(lag, 95)), 3),
            "max": round(float(lag.max()), 3),
        }
    return out


def run(args: argparse.Namespace) -> dict:
    """Stream unpaced (speed, drift), then paced (arrival lag)."""
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
        "drift_ms_per_hour": fast.get("drift_ms_per_hour"),
        "max_deviation_ms": fast.get("max_deviation_ms"),
        "samples_sent": fast["n_sent"],
        "samples_received": fast["n_received"],
    }
    if paced is not None:
        result["paced_s"] = args.paced_s
        result["paced_arrival_lag_ms"] = paced.get("arrival_lag_ms")
        result["paced_samples_received"] = paced["n_received"]
    return result
