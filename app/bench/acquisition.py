"""Epoch latency of `eegs acquire` against mne-lsl's EpochsStream, same stream, same run.

A source process streams 64 channels at 1000 Hz in 20-sample chunks (sample-clock
timestamps) and pushes, at the same instants, a JSON marker (for EEGS) and a numeric
marker (for mne-lsl). `eegs acquire` runs as its own process with the default
protocol (notch, band-pass, baseline, resampling to 250 Hz) and a ZeroMQ subscriber
here stamps each epoch's arrival. mne-lsl's EpochsStream (no reject, same filters)
runs in a third process that stamps each new epoch. Latency = arrival on the LSL
clock minus the marker time plus tmax (the end of the epoch's window). The source's
clock starts so that every window ends mid-chunk (:func:`aligned_t0`): the wait for
that chunk is the same in every run, so two runs can be compared.

mne-lsl's epochs carry no timestamp of their own (``EpochsStream.events`` holds only
the event codes), so the poller notes, for each epoch mne-lsl adds to its buffer, the
LSL timestamp of the sample it put at t = 0 (mne-lsl's own event time: the first
sample at or after the event's timestamp). Each delivered epoch is paired with the
marker at that event time (:func:`match_by_event_time`, within one sample period plus
2 ms of LSL clock correction, :func:`match_tolerance`), never by arrival order, so a
skipped marker cannot shift the pairs after it.

JSON: ``n_markers`` sent; EEGS: ``n_epochs``, ``missed`` (markers without an epoch),
``epoch_latency_ms``, ``processing_ms``; mne-lsl: ``mne_lsl_n_epochs`` delivered,
``mne_lsl_matched``, ``mne_lsl_missed`` (markers mne-lsl delivered no epoch for:
counted here, never as late), ``mne_lsl_unmatched`` (delivered epochs at no marker's
time), ``mne_lsl_epoch_latency_ms`` (matched epochs only),
``mne_lsl_event_time_minus_marker_ms`` (their t = 0 against the marker),
``match_tolerance_ms``; ``ratio_p95`` = EEGS p95 / mne-lsl p95.

``--with-dashboard`` runs ``--repeats`` pairs, without and with ``eegs dashboard`` and a
connected page, alternating which goes first (AB, BA, ...), pools each arm's epochs and
reports ``with_dashboard``: the ratios of the pooled median and p95 with their bootstrap
95 % intervals (:func:`app.bench._dashboard.quantile_ratio`), each pair's processing
medians, and the page's own figures; ``without_dashboard`` and ``with_dashboard_run``
are the first pair in full.
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.bench._ports import socket_free_port

_TMIN, _TMAX = -0.2, 0.5


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument(
        "--n-epochs",
        type=int,
        default=None,
        help="markers to send per run (>= 100; default 120, and 200 per run with "
        "--with-dashboard, whose runs are pooled: a ratio of two p95s needs more than the 6 "
        "epochs above a p95 of 120)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="with --with-dashboard: pairs of runs (alternating which goes first: AB, BA, "
        "...), pooled per arm",
    )
    p.add_argument("--period", type=float, default=0.3, help="seconds between markers")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--sfreq", type=float, default=1000.0)
    p.add_argument("--chunk", type=int, default=20, help="samples per LSL chunk")
    p.add_argument(
        "--with-dashboard",
        action="store_true",
        help="measure twice in one run, without and with `eegs dashboard` and a connected "
        "headless Chromium page; report the ratios",
    )
    p.add_argument(
        "--source-niceness",
        type=int,
        default=0,
        help="niceness of the stand-in amplifier process (default 0: an amplifier's LSL app "
        "at the default priority); a lower one tells its delivery apart from the acquisition's",
    )


def _source(
    name: str,
    n_ch: int,
    sfreq: float,
    chunk: int,
    t_start: float,
    period: float,
    n_markers: int,
    seconds: float,
    niceness: int = 0,
) -> None:
    import json

    import pylsl

    from workers.lsl_clock import (
        SampleClock,
        make_eeg_info,
        make_marker_outlet,
        push_chunk_at_clock,
    )
    from workers.priority import set_niceness

    if niceness:
        set_niceness(niceness, "stand-in amplifier")

    eeg = pylsl.StreamOutlet(make_eeg_info(name, [f"EEG{i:03d}" for i in range(n_ch)], sfreq))
    mrk = make_marker_outlet(f"{name}-markers")
    num = pylsl.StreamOutlet(
        pylsl.StreamInfo(f"{name}-events", "Markers", 1, 0, pylsl.cf_int32, f"{name}-ev")
    )
    rng = np.random.default_rng(0)
    clock = SampleClock(sfreq, t0=aligned_t0(t_start + _TMAX, sfreq, chunk, pylsl.local_clock()))
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


def aligned_t0(window_end: float, sfreq: float, chunk: int, now: float) -> float:
    """The source's first-sample time that puts ``window_end`` mid-chunk, whenever it starts.

    An epoch waits for the chunk holding its window's end: 0 to one chunk period
    (20 ms at the defaults). With the source's clock started at an arbitrary instant
    that wait differed from run to run, by as much as the effect a run with and without
    the dashboard is meant to show. Every run now waits half a chunk, the mean of a
    random phase (markers a whole number of chunks apart keep it for every epoch).
    """
    c = int(chunk)
    q = int(np.floor(((window_end - now - 0.05) * sfreq - c / 2) / c))
    return window_end - (q * c + c / 2) / sfreq


def match_by_event_time(
    epoch_times: Sequence[float], marker_times: Sequence[float], tol: float
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Pair epochs with markers by event time, not by the order they arrived in.

    Parameters
    ----------
    epoch_times : sequence of float
        Event (t = 0) time of each delivered epoch, in delivery order.
    marker_times : sequence of float
        Timestamp of each marker sent.
    tol : float
        Largest |epoch time - marker time| (seconds) that still pairs them.

    Returns
    -------
    pairs : list of (epoch index, marker index)
        Each marker pairs with at most one epoch, the closest in time.
    missed : list of int
        Markers no delivered epoch belongs to (missed, not late).
    unmatched : list of int
        Epochs at no marker's time, or at one a closer epoch already took.
    """
    e = np.asarray(epoch_times, dtype=np.float64)
    m = np.asarray(marker_times, dtype=np.float64)
    best: dict[int, tuple[float, int]] = {}  # marker -> (distance, epoch)
    unmatched = []
    order = np.argsort(m, kind="stable")
    m_sorted = m[order]
    for i, t in enumerate(e):
        j = int(np.searchsorted(m_sorted, t))
        near = [int(order[c]) for c in (j - 1, j) if 0 <= c < m.size]
        k = min(near, key=lambda k: abs(m[k] - t), default=None)
        d = abs(m[k] - t) if k is not None else np.inf
        if d > tol or (k in best and best[k][0] <= d):
            unmatched.append(i)
            continue
        if k in best:  # a closer epoch takes the marker back
            unmatched.append(best[k][1])
        best[k] = (d, i)
    pairs = sorted(((i, k) for k, (_, i) in best.items()), key=lambda p: p[1])
    missed = [k for k in range(m.size) if k not in best]
    return pairs, missed, sorted(unmatched)


def match_tolerance(sfreq: float) -> float:
    """Seconds by which an epoch's t = 0 may miss its marker's timestamp and still pair.

    mne-lsl's t = 0 is the first sample at or after the event, up to one sample period
    late; and it reads EEG and events through two inlets, each clock-corrected by LSL
    (``processing_flags="all"``), whose estimates can differ by a fraction of a
    millisecond on a busy host. Markers here are hundreds of ms apart.
    """
    return 1.0 / sfreq + 0.002


def _record_onsets(bufsize: int) -> list[float]:
    """Have mne-lsl note the t = 0 timestamp of every epoch it adds to its buffer.

    ``EpochsStream`` keeps no per-epoch time; its acquisition thread picks new epochs
    with ``mne_lsl.stream.epochs._prune_events`` (rows: onset sample index into the
    stream timestamps ``ts``). Wrapping it, in the poller process only, gives the
    onsets in the order the epochs enter the buffer.
    """
    from mne_lsl.stream import epochs as mne_epochs

    prune = getattr(mne_epochs, "_prune_events", None)
    if prune is None:
        raise RuntimeError("this mne-lsl has no epochs._prune_events: cannot time its epochs")
    onsets: list[float] = []

    def recording(events, event_id, buffer_size, ts, last_ts, ts_events, tmin_shift):
        kept = prune(events, event_id, buffer_size, ts, last_ts, ts_events, tmin_shift)
        # mne-lsl keeps only the newest bufsize of a batch; no reject, so none dropped
        onsets.extend(float(ts[i]) for i in kept[-bufsize:, 0])
        return kept

    mne_epochs._prune_events = recording
    return onsets


def _mne_lsl_poller(name: str, n_markers: int, deadline: float, out: mp.Queue) -> None:
    import pylsl
    from mne_lsl.stream import EpochsStream, StreamLSL

    bufsize = 20
    onsets = _record_onsets(bufsize)
    stream = StreamLSL(5, name=name).connect(processing_flags="all", timeout=10)
    stream.notch_filter(50.0)
    stream.filter(0.5, 40.0, iir_params={"order": 4, "ftype": "butter", "output": "sos"})
    events = StreamLSL(20, name=f"{name}-events").connect(processing_flags="all", timeout=10)
    epochs = EpochsStream(
        stream,
        bufsize=bufsize,
        event_id=1,
        event_channels=events.ch_names[0],
        event_stream=events,
        tmin=_TMIN,
        tmax=_TMAX,
        baseline=(None, 0),
    ).connect(acquisition_delay=0.001)
    out.put("ready")
    delivered: list[tuple[float, float]] = []  # (event time, arrival), LSL clock
    taken = 0
    while pylsl.local_clock() < deadline and len(delivered) < n_markers:
        n = epochs.n_new_epochs
        if n:
            now = pylsl.local_clock()
            epochs.get_data(n_epochs=n)  # consume them as a user would
            known = len(onsets)
            # the n newest in the buffer: an older one whose count get_data reset
            # before we saw it stays undelivered (missed), not paired with this arrival
            delivered.extend((t, now) for t in onsets[max(taken, known - n) : known])
            taken = known
        time.sleep(0.0005)
    epochs.disconnect()
    events.disconnect()
    stream.disconnect()
    out.put(delivered)


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
    dashboard = getattr(args, "with_dashboard", False)
    if args.n_epochs is None:
        args.n_epochs = 200 if dashboard else 120
    if not dashboard:
        out = _measure(args)
        out.pop("latencies")
        return out
    from app.bench._dashboard import quantile_ratio

    pairs: list[tuple[dict, dict]] = []
    for k in range(args.repeats):  # AB, BA, AB...: a drift of the host cancels out
        order = (True, False) if k % 2 else (False, True)
        runs = {d: _measure(args, tag=f"{k}{'b' if d else 'a'}", dashboard=d) for d in order}
        pairs.append((runs[False], runs[True]))
    pooled = [[v for p in pairs for v in p[j].pop("latencies")] for j in (0, 1)]
    median = quantile_ratio(pooled[1], pooled[0], 50)
    p95 = quantile_ratio(pooled[1], pooled[0], 95)
    without, loaded = pairs[0]
    return {
        "benchmark": "acquisition",
        "with_dashboard": {
            "repeats": args.repeats,
            "n_epochs": [len(pooled[0]), len(pooled[1])],
            "epoch_latency_ms": [_stats(pooled[0]), _stats(pooled[1])],
            "epoch_latency_median_ratio": median["ratio"],
            "epoch_latency_median_ratio_ci95": median["ci95"],
            "epoch_latency_p95_ratio": p95["ratio"],
            "epoch_latency_p95_ratio_ci95": p95["ci95"],
            "processing_ms_median": [
                [a["processing_ms"]["median"], b["processing_ms"]["median"]] for a, b in pairs
            ],
            "missed": [sum(p[j]["missed"] for p in pairs) for j in (0, 1)],
            "goal_ratio": 1.05,
            "dashboard": [b.pop("dashboard") for _, b in pairs],
        },
        "without_dashboard": without,
        "with_dashboard_run": loaded,
    }


def _measure(args: argparse.Namespace, tag: str = "", dashboard: bool = False) -> dict:
    """One run; with ``dashboard``, a dashboard and its page watch the streams and session."""
    import contextlib

    import pylsl
    import zmq

    from workers.messages import decode
    from workers.session_store import read_events

    name = f"bench-{os.getpid()}{tag}"
    lead = 16.0 if dashboard else 6.0  # the page is up before the first marker
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
            getattr(args, "source_niceness", 0),
        ),
        daemon=True,
    )
    source.start()
    queue = ctx.Queue()
    poller = ctx.Process(
        target=_mne_lsl_poller,
        args=(name, args.n_epochs, deadline, queue),
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
    load = contextlib.ExitStack()
    try:
        if dashboard:
            from app.bench._dashboard import DashboardLoad, dashboard_protocol

            with socket_free_port() as dead:
                pass
            proto = dashboard_protocol(Path(tmp) / "dashboard.toml", name, f"{name}-markers", dead)
            watch = load.enter_context(
                DashboardLoad(Path(tmp) / "session", proto, Path(tmp) / "dashboard.log")
            )
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
        delivered = None
        while delivered is None and pylsl.local_clock() < deadline + 10:
            try:
                item = queue.get(timeout=1.0)
            except Exception:
                continue
            if isinstance(item, list):
                delivered = item
        while pylsl.local_clock() < deadline and len(ours) < args.n_epochs:
            time.sleep(0.1)
        stop.set()
        rx.join(2)
    finally:
        load.close()
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
    delivered = delivered or []
    markers = t_start + np.arange(args.n_epochs) * args.period
    tol = match_tolerance(args.sfreq)
    pairs, missed, unmatched = match_by_event_time([t for t, _ in delivered], markers, tol)
    theirs_lat = [(delivered[i][1] - (markers[k] + _TMAX)) * 1e3 for i, k in pairs]
    onset_err = [(delivered[i][0] - markers[k]) * 1e3 for i, k in pairs]
    mine, theirs = _stats(ours), _stats(theirs_lat)
    return {
        "benchmark": "acquisition",
        "stream": {
            "channels": args.channels,
            "sfreq": args.sfreq,
            "chunk_samples": args.chunk,
            "source_niceness": getattr(args, "source_niceness", 0),
        },
        "window_s": [_TMIN, _TMAX],
        "n_markers": args.n_epochs,
        "n_epochs": len(ours),
        "missed": max(0, args.n_epochs - len(ours)),
        "epoch_latency_ms": mine,
        "processing_ms": _stats(processing),
        "mne_lsl_n_epochs": len(delivered),
        "mne_lsl_matched": len(pairs),
        "mne_lsl_missed": len(missed),
        "mne_lsl_unmatched": len(unmatched),
        "mne_lsl_epoch_latency_ms": theirs,
        "mne_lsl_event_time_minus_marker_ms": _stats(onset_err),
        "match_tolerance_ms": round(tol * 1e3, 3),
        "ratio_p95": round(mine["p95"] / theirs["p95"], 3) if theirs["p95"] > 0 else None,
        "latencies": ours,
        **({"dashboard": watch.stats} if dashboard else {}),
    }
