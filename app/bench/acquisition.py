"""Epoch latency of `eegs acquire` against mne-lsl's EpochsStream, same stream, same run.

A source process streams 64 channels at 1000 Hz in 20-sample chunks (sample-clock
timestamps) and pushes, at the same instants, a JSON marker (for EEGS) and a numeric
marker (for mne-lsl). `eegs acquire` runs as its own process with the default
protocol (notch, band-pass, baseline, resampling to 250 Hz) and a ZeroMQ subscriber
here stamps each epoch's arrival. mne-lsl's EpochsStream (no reject, same filters)
runs in a third process that stamps each new epoch. Latency = arrival on the LSL
clock minus the marker time plus tmax (the end of the epoch's window).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

_TMIN, _TMAX = -0.2, 0.5


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("--n-epochs", type=int, default=120, help="markers to send (>= 100)")
    p.add_argument("--period", type=float, default=0.3, help="seconds between markers")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--sfreq", type=float, default=1000.0)
    p.add_argument("--chunk", type=int, default=20, help="samples per LSL chunk")


def _source(
    name: str,
    n_ch: int,
    sfreq: float,
    chunk: int,
    t_start: float,
    period: float,
    n_markers: int,
    seconds: float,
) -> None:
    import json

    import pylsl

    from workers.lsl_clock import (
        SampleClock,
        make_eeg_info,
        make_marker_outlet,
        push_chunk_at_clock,
    )

    eeg = pylsl.StreamOutlet(make_eeg_info(name, [f"EEG{i:03d}" for i in range(n_ch)], sfreq))
    mrk = make_marker_outlet(f"{name}-markers")
    num = pylsl.StreamOutlet(
        pylsl.StreamInfo(f"{name}-events", "Markers", 1, 0, pylsl.cf_int32, f"{name}-ev")
    )
    rng = np.random.default_rng(0)
    clock = SampleClock(sfreq)
    noise = rng.normal(0, 10, (int(sfreq) * 2, n_ch)).astype(np.float32)
    k_marker = 0
    n_total = int(seconds * sfreq)
    for first in range(0, n_total, chunk):
        block = noise[first % noise.shape[0] :][:chunk]
        if block.shape[0] < chunk:
            block = noise[:chunk]
        push_chunk_at_clock(eeg, clock, first, block)
        now = pylsl.local_clock()
        while k_marker < n_markers and t_start + k_marker * period <= now:
            t = t_start + k_marker * period
            mrk.push_sample([json.dumps({"event": "stimulus_onset", "trial": k_marker})], t)
            num.push_sample([1], t)
            k_marker += 1


def _mne_lsl_poller(
    name: str, t_start: float, period: float, n_markers: int, deadline: float, out: mp.Queue
) -> None:
    import pylsl
    from mne_lsl.stream import EpochsStream, StreamLSL

    stream = StreamLSL(5, name=name).connect(processing_flags="all", timeout=10)
    stream.notch_filter(50.0)
    stream.filter(0.5, 40.0, iir_params={"order": 4, "ftype": "butter", "output": "sos"})
    events = StreamLSL(20, name=f"{name}-events").connect(processing_flags="all", timeout=10)
    epochs = EpochsStream(
        stream,
        bufsize=20,
        event_id=1,
        event_channels=events.ch_names[0],
        event_stream=events,
        tmin=_TMIN,
        tmax=_TMAX,
        baseline=(None, 0),
    ).connect(acquisition_delay=0.001)
    out.put("ready")
    latencies = []
    j = 0
    while pylsl.local_clock() < deadline and j < n_markers:
        n = epochs.n_new_epochs
        if n:
            now = pylsl.local_clock()
            epochs.get_data(n_epochs=n)  # consume them as a user would
            for _ in range(n):
                latencies.append((now - (t_start + j * period + _TMAX)) * 1e3)
                j += 1
        time.sleep(0.0005)
    epochs.disconnect()
    events.disconnect()
    stream.disconnect()
    out.put(latencies)


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    if not a.size:
        return {"median": float("nan"), "p95": float("nan"), "max": float("nan")}
    return {
        "median": round(float(np.median(a)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "max": round(float(a.max()), 3),
    }


def run(args: argparse.Namespace) -> dict:
    """Run the three processes and compare their latencies."""
    import pylsl
    import zmq

    from workers.messages import decode
    from workers.session_store import read_events

    name = f"bench-{os.getpid()}"
    lead = 6.0
    t_start = pylsl.local_clock() + lead
    seconds = lead + args.n_epochs * args.period + 2.0
    deadline = t_start + args.n_epochs * args.period + 3.0
    ctx = mp.get_context("spawn")
    source = ctx.Process(
        target=_source,
        args=(
            name,
            args.channels,
            args.sfreq,
            args.chunk,
            t_start,
            args.period,
            args.n_epochs,
            seconds,
        ),
        daemon=True,
    )
    source.start()
    queue = ctx.Queue()
    poller = ctx.Process(
        target=_mne_lsl_poller,
        args=(name, t_start, args.period, args.n_epochs, deadline, queue),
        daemon=True,
    )
    poller.start()
    with socket_free_port() as port:
        endpoint = f"tcp://127.0.0.1:{port}"
    tmpdir = tempfile.TemporaryDirectory(prefix="eegs-bench-")
    tmp = tmpdir.name
    acquire = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "acquire",
            "--session",
            str(Path(tmp) / "session"),
            "--eeg",
            name,
            "--markers",
            f"{name}-markers",
            "--tmin",
            str(_TMIN),
            "--tmax",
            str(_TMAX),
            "--endpoint",
            endpoint,
            "--no-record",
            "--duration",
            str(seconds + 2),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ours: list[float] = []
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(endpoint)
    try:
        stop = threading.Event()

        def receive() -> None:
            while not stop.is_set():
                if sub.poll(50):
                    frames = sub.recv_multipart()
                    now = pylsl.local_clock()
                    msg, _ = decode(frames)
                    ours.append((now - msg.window_end_lsl) * 1e3)

        rx = threading.Thread(target=receive, daemon=True)
        rx.start()
        mne_lsl_lat = None
        while mne_lsl_lat is None and pylsl.local_clock() < deadline + 10:
            try:
                item = queue.get(timeout=1.0)
            except Exception:
                continue
            if isinstance(item, list):
                mne_lsl_lat = item
        while pylsl.local_clock() < deadline and len(ours) < args.n_epochs:
            time.sleep(0.1)
        stop.set()
        rx.join(2)
    finally:
        for proc in (source, poller):
            if proc.is_alive():
                proc.terminate()
            proc.join(5)
        acquire.terminate()
        try:
            acquire.wait(15)
        except subprocess.TimeoutExpired:
            acquire.kill()
        sub.close()
        events = list(read_events(Path(tmp) / "session" / "events.jsonl"))
        tmpdir.cleanup()
    processing = [e["processing_ms"] for e in events if e["event"] == "epoch"]
    if not ours:
        raise RuntimeError(f"eegs acquire delivered no epoch: {acquire.stderr.read()[-2000:]}")
    mine, theirs = _stats(ours), _stats(mne_lsl_lat or [])
    return {
        "benchmark": "acquisition",
        "stream": {"channels": args.channels, "sfreq": args.sfreq, "chunk_samples": args.chunk},
        "window_s": [_TMIN, _TMAX],
        "n_epochs": len(ours),
        "epoch_latency_ms": mine,
        "processing_ms": _stats(processing),
        "mne_lsl_n_epochs": len(mne_lsl_lat or []),
        "mne_lsl_epoch_latency_ms": theirs,
        "ratio_p95": round(mine["p95"] / theirs["p95"], 3) if theirs["p95"] > 0 else None,
    }


class socket_free_port:
    """Context manager yielding a free loopback TCP port."""

    def __enter__(self) -> int:
        import socket

        self._s = socket.socket()
        self._s.bind(("127.0.0.1", 0))
        return self._s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self._s.close()
