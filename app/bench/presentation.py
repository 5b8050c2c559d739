"""CPU per frame of `eegs present` while 1024x1024 images arrive over ZeroMQ, 8 per round.

A stand-in generation worker (a REP socket in this process) answers each image
request with N distinct PNG images (smooth colour fields with texture, about the
size and entropy of generated pictures) after a set "generation" delay. `eegs present`
runs as its own process on a virtual display (Xvfb, frames paced in software at the
protocol's refresh rate, since Xvfb has no vsync) through a closed-loop block that
asks for every round. Reported from the session it writes: the main thread's CPU
time per frame between one flip returning and the next flip call (drawing, keys,
markers, texture upload in bands) for all frames and per phase, the flip intervals
and dropped frames, the wall time spent inside ``win.flip()`` per phase (buffer swap:
on Xvfb this is software rendering of the frame), how long trials waited for images,
and the markers' push delay.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

_PROTOCOL = """
[streams]
markers = "{markers}"
connect_timeout_s = 0.5
[presentation]
wait_for_key = false
text_min_s = 0.5
rest_every_n_trials = 0
late_image_timeout_s = 60.0
[presentation.timing]
fixation_s = {fixation}
fixation_jitter_s = 0.1
stimulus_s = {stimulus}
stimulus_jitter_s = 0.0
iti_s = {iti}
iti_jitter_s = 0.1
[presentation.screen]
size_px = [{width}, {height}]
refresh_hz = {hz}
pace_frames = true
check_refresh = false
upload_budget_ms = {budget}
[presentation.photodiode]
enabled = true
[generation]
endpoint = "tcp://127.0.0.1:{port}"
[[presentation.blocks]]
kind = "closed_loop"
source = "generator"
n_trials = {n}
n_rounds = {rounds}
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--images-per-round", type=int, default=8)
    p.add_argument("--size", type=int, default=1024, help="image side, pixels")
    p.add_argument("--generation-s", type=float, default=1.0, help="reply delay per request")
    p.add_argument("--fixation-s", type=float, default=0.5)
    p.add_argument("--stimulus-s", type=float, default=1.0)
    p.add_argument("--iti-s", type=float, default=1.0)
    p.add_argument("--refresh-hz", type=float, default=60.0)
    p.add_argument("--upload-budget-ms", type=float, default=2.0)
    p.add_argument("--window", default="1280x1024", help="window (and Xvfb screen) size")
    p.add_argument("--session", type=Path, default=None, help="keep the session here")
    p.add_argument(
        "--with-dashboard",
        action="store_true",
        help="measure twice in one run, without and with `eegs dashboard` and a connected "
        "headless Chromium page (an EEG stream for it in both); report the ratios",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="with --with-dashboard: pairs of runs (alternating which goes first) whose "
        "dropped frames are pooled; one pair's few dozen drops vary by their square root",
    )


def _images(n: int, size: int, seed: int) -> list[bytes]:
    """Distinct PNGs: smooth random colour fields plus fine texture (not pure noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.int16)
        noise = rng.integers(-12, 12, (size, size, 3), dtype=np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(field + noise, 0, 255).astype(np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _generator(
    port: int, pngs: list[bytes], delay_s: float, stop: threading.Event, log: list[dict]
) -> None:
    import zmq

    from workers.messages import ImageInfo, decode, encode_image_batch

    sock = zmq.Context.instance().socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://127.0.0.1:{port}")
    k = 0
    while not stop.is_set():
        if not sock.poll(50):
            continue
        req, _ = decode(sock.recv_multipart())
        t0 = time.monotonic()
        stop.wait(delay_s)
        images = []
        for i in range(req.n_images):
            images.append((ImageInfo(image_id=f"r{req.round:02d}-{i}"), pngs[k % len(pngs)]))
            k += 1
        frames = encode_image_batch(req.session, req.round, images)
        sock.send_multipart(frames)
        log.append(
            {
                "round": req.round,
                "bytes": sum(len(f) for f in frames),
                "reply_s": round(time.monotonic() - t0, 3),
            }
        )
    sock.close()


def run(args: argparse.Namespace) -> dict:
    """Run the presentation against the stand-in worker and read back its frames."""
    if not getattr(args, "with_dashboard", False):
        return _measure(args)
    from app.bench._dashboard import count_ratio, eeg_outlet, ratio

    eeg = f"bench-eeg-{os.getpid()}"
    stop = threading.Event()
    source = threading.Thread(target=eeg_outlet, args=(eeg, stop), daemon=True)
    source.start()
    pairs: list[tuple[dict, dict]] = []
    try:
        for k in range(args.repeats):  # AB, BA, AB...: a drift of the host cancels out
            order = (eeg, None) if k % 2 else (None, eeg)
            runs = {d: _measure(args, dashboard_eeg=d) for d in order}
            pairs.append((runs[None], runs[eeg]))
    finally:
        stop.set()
        source.join(2)

    def total(key: str, j: int) -> int:
        return int(sum(p[j][key] for p in pairs))

    dropped = [total("dropped_frames", 0), total("dropped_frames", 1)]
    late = [total("frames_late_over_1_5_periods", 0), total("frames_late_over_1_5_periods", 1)]
    without, loaded = pairs[0]
    dropped_ratio = count_ratio(dropped[1], dropped[0])
    return {
        "benchmark": "presentation",
        "with_dashboard": {
            "repeats": args.repeats,
            "n_frames": [total("n_frames", 0), total("n_frames", 1)],
            "dropped_frames": dropped,
            "dropped_frames_ratio": dropped_ratio["ratio"],
            "dropped_frames_ratio_ci95": dropped_ratio["ci95"],
            "dropped_frames_by_repeat": [
                [a["dropped_frames"], b["dropped_frames"]] for a, b in pairs
            ],
            "frames_late": late,
            "frames_late_ratio": ratio(late[1], late[0]),
            "own_cpu_ms_median_ratio": ratio(
                np.median([b["own_cpu_ms"]["median"] for _, b in pairs]),
                np.median([a["own_cpu_ms"]["median"] for a, _ in pairs]),
            ),
            "flip_interval_p99_ratio": ratio(
                np.median([b["flip_interval_ms"]["p99"] for _, b in pairs]),
                np.median([a["flip_interval_ms"]["p99"] for a, _ in pairs]),
            ),
            "goal_ratio": 1.05,
            "dashboard": [b.pop("dashboard") for _, b in pairs],
        },
        "without_dashboard": without,
        "with_dashboard_run": loaded,
    }


def _measure(args: argparse.Namespace, dashboard_eeg: str | None = None) -> dict:
    """One run; with ``dashboard_eeg``, a dashboard and its page watch it (EEG stream named so)."""
    from app.bench.acquisition import socket_free_port
    from app.presentation.frames import distribution, load_frames
    from workers.session_store import read_events

    width, height = (int(v) for v in args.window.split("x"))
    pngs = _images(2 * args.images_per_round, args.size, seed=0)
    with socket_free_port() as port:
        pass
    tmp = tempfile.TemporaryDirectory(prefix="eegs-bench-present-")
    root = Path(tmp.name)
    protocol = root / "protocol.toml"
    protocol.write_text(
        _PROTOCOL.format(
            markers=f"bench-present-{os.getpid()}",
            fixation=args.fixation_s,
            stimulus=args.stimulus_s,
            iti=args.iti_s,
            width=width,
            height=height,
            hz=args.refresh_hz,
            budget=args.upload_budget_ms,
            port=port,
            n=args.images_per_round,
            rounds=args.rounds,
        )
    )
    stop = threading.Event()
    replies: list[dict] = []
    gen = threading.Thread(
        target=_generator, args=(port, pngs, args.generation_s, stop, replies), daemon=True
    )
    gen.start()
    session = args.session or root / "session"
    load = contextlib.nullcontext()
    if dashboard_eeg is not None:
        from app.bench._dashboard import DashboardLoad, dashboard_protocol

        with socket_free_port() as dead:
            pass
        markers = f"bench-present-{os.getpid()}"
        dproto = dashboard_protocol(root / "dashboard.toml", dashboard_eeg, markers, dead)
        load = DashboardLoad(session, dproto, root / "dashboard.log")
    try:
        with load:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "app.cli",
                    "present",
                    "--protocol",
                    str(protocol),
                    "--session",
                    str(session),
                    "--headless",
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
    finally:
        stop.set()
        gen.join(2)
    if proc.returncode != 0:
        tmp.cleanup()
        raise RuntimeError(f"eegs present failed ({proc.returncode}): {proc.stderr[-3000:]}")
    frames = load_frames(session)
    events = list(read_events(session / "events.jsonl"))
    info = json.loads((session / "session.json").read_text())
    tmp.cleanup()

    cpu = frames["cpu_ms"][1:].astype(np.float64)
    flip = frames["flip_ms"][1:].astype(np.float64)
    phase = np.asarray(frames["phase_names"])[frames["phase"][1:]]
    intervals = np.diff(frames["flip_lsl"]) * 1e3
    period_ms = 1e3 / args.refresh_hz
    trials = [e for e in events if e["event"] == "trial"]
    late = [e for e in events if e["event"] == "image_late"]
    waits = [t["late_ms"] for t in trials if t["late_ms"] > 0]
    pres = info.get("presentation", {})
    return {
        "benchmark": "presentation",
        "display": "Xvfb (software GL), frames paced at the refresh rate",
        "images": {
            "per_round": args.images_per_round,
            "side_px": args.size,
            "rounds": args.rounds,
            "png_mb_mean": round(float(np.mean([len(p) for p in pngs])) / 1e6, 2),
            "generation_delay_s": args.generation_s,
            "batches": len(replies),
            "batch_mb": [round(r["bytes"] / 1e6, 1) for r in replies],
        },
        "n_frames": int(frames["flip_lsl"].size),
        "n_trials": len(trials),
        "own_cpu_ms": distribution(cpu),
        "own_cpu_ms_by_phase": {
            name: distribution(cpu[phase == name]) for name in sorted(set(phase.tolist()))
        },
        "frames_over_5ms_cpu": int((cpu > 5.0).sum()),
        "flip_call_ms_by_phase": {
            name: distribution(flip[phase == name]) for name in sorted(set(phase.tolist()))
        },
        "flip_interval_ms": distribution(intervals),
        "frames_late_over_1_5_periods": int((intervals > 1.5 * period_ms).sum()),
        "frames_late_by_phase": {
            name: int((intervals[phase == name] > 1.5 * period_ms).sum())
            for name in sorted(set(phase.tolist()))
        },
        "dropped_frames": pres.get("dropped_frames"),
        "stimulus_ms": distribution(np.asarray([t["stimulus_ms"] for t in trials])),
        "trials_that_waited_for_images": len(late),
        "image_wait_ms": distribution(np.asarray(waits)) if waits else {},
        "marker_push_delay_ms": pres.get("marker_push_delay_ms"),
        "uploaded_rows": pres.get("uploaded_rows"),
        **({"dashboard": load.stats} if dashboard_eeg is not None else {}),
    }
