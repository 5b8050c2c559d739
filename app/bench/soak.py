"""Soak: a long closed loop on the brain model; memory and latency over time (JSON + CSV).

Runs one session in this process as `eegs pilot --headless` would (the bench protocol of
`eegs bench faults`: asymmetry reward, no rating screen, a 4-image calibration block,
then closed-loop rounds of 8 images for ``--minutes``; the generator never stops early
and its pool holds more images than the rounds use). Every ``--sample-s`` seconds it
reads the resident memory (RSS, psutil) of every process of the session: this one
("session"), each supervised child and their own children (the recorder). Afterwards it
reads from ``events.jsonl`` each epoch's latency (``epoch``: end of its window to
published) and each round's ready latency (the presentation's request for round r, sent
as round r-1's last image shows, to its batch received).

Figures, from the start of the closed loop: per process, RSS growth after the warm-up
(``--warmup-minutes``; median of the minute after it against the median of the loop's
last minute, %; goal < 5 %; the report written after the loop is not counted); per
latency, p95 of the first ``--baseline-minutes`` against p95 of the rest (ratio; goal
within ±10 %). Runs shorter than three warm-ups scale both
windows to a third of the run. ``soak-timeseries.csv`` (t_s, kind, name, value) is
written beside the session.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.bench import _closed_loop as cl
from workers.session_store import EVENTS_FILE, EventTail

RSS_GOAL_PCT = 5.0
P95_GOAL_RATIO = 0.10


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("--minutes", type=float, default=30.0, help="closed-loop time")
    p.add_argument("--warmup-minutes", type=float, default=5.0, help="RSS growth counted after")
    p.add_argument("--baseline-minutes", type=float, default=5.0, help="latency baseline window")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", type=Path, default=None, help="keep the session and CSV here")


class RssSampler:
    """Samples the RSS of the session process, its children and theirs, in a thread."""

    def __init__(self, session: Path, every_s: float) -> None:
        self.session, self.every_s = session, every_s
        self.rows: list[tuple[float, str, float]] = []  # (wall time, process, MiB)
        # followed line by line: re-reading the whole growing log every few seconds
        # would itself grow this process's memory with the log
        self._tail = EventTail(session / EVENTS_FILE)
        self._pids: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        """Start sampling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def sample(self) -> None:
        """One reading of every process (a process that just ended is skipped)."""
        import psutil

        now = time.time()
        for e in self._tail.new():
            if e["event"] == "child_started":
                self._pids[e["name"]] = e["pid"]
        roots = {"session": os.getpid(), **self._pids}
        for name, pid in roots.items():
            try:
                proc = psutil.Process(pid)
                procs = [(name, proc)]
                if name != "session":
                    procs += [(f"{name}/{sub.name()}", sub) for sub in proc.children(True)]
            except psutil.Error:
                continue
            for label, p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                if rss > 0:  # 0: an exited child not yet reaped (Xvfb's xkbcomp, a zombie)
                    self.rows.append((now, label, rss / 2**20))


def _p95(values: list[float]) -> float | None:
    return round(float(np.percentile(values, 95)), 3) if values else None


def latency_series(events: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """(wall time, ms) of each epoch's latency and each round's ready latency.

    A round is ready when the presentation holds its batch; it asked for it as the
    previous round's last image showed, so ready latency runs from that request to the
    batch. (With ``reward_wait_s = 0`` the worker does not wait for the last epoch: a
    latency counted from that epoch would be negative.)
    """
    epochs = [(e["t_wall"], float(e["latency_ms"])) for e in events if e["event"] == "epoch"]
    asked: dict[int, float] = {}
    batch_t: dict[int, float] = {}
    for e in events:  # the presentation's own (they name the block), not the worker's
        if e["event"] == "image_request" and "round" in e and "block" in e:
            asked.setdefault(e["round"], e["t_wall"])
        elif e["event"] == "image_batch" and "round" in e and "block" in e:
            batch_t.setdefault(e["round"], e["t_wall"])  # logged as it is received
    ready = [(batch_t[r], (batch_t[r] - asked[r]) * 1e3) for r in sorted(batch_t) if r in asked]
    return {"epoch_latency_ms": epochs, "round_ready_latency_ms": ready}


def compare_p95(series: list[tuple[float, float]], t0: float, split_s: float) -> dict[str, Any]:
    """p95 before ``t0 + split_s`` against after, and their ratio."""
    first = [v for t, v in series if t < t0 + split_s]
    rest = [v for t, v in series if t >= t0 + split_s]
    a, b = _p95(first), _p95(rest)
    ratio = round(b / a, 3) if a and b is not None else None
    return {
        "n_first": len(first),
        "n_rest": len(rest),
        "p95_first": a,
        "p95_rest": b,
        "ratio": ratio,
        "within_goal": None if ratio is None else abs(ratio - 1.0) <= P95_GOAL_RATIO,
    }


def rss_growth(
    rows: list[tuple[float, str, float]],
    t0: float,
    warmup_s: float,
    window_s: float,
    t_end: float | None = None,
) -> dict[str, Any]:
    """Per process: median RSS of the window after the warm-up against the loop's last.

    ``t_end`` is the closed loop's end: what the session does after it (the report,
    the dataset) is not the loop's growth; ``rss_mb_max`` still counts every sample.
    """
    out = {}
    t_last = max((t for t, _, _ in rows), default=t0) if t_end is None else t_end
    for name in sorted({n for _, n, _ in rows}):
        mine = [(t, v) for t, n, v in rows if n == name]
        warm = [v for t, v in mine if t0 + warmup_s <= t < t0 + warmup_s + window_s]
        end = [v for t, v in mine if t_last - window_s <= t <= t_last]
        base = float(np.median(warm)) if warm else None
        last = float(np.median(end)) if end else None
        growth = round((last - base) / base * 100, 2) if base and last is not None else None
        out[name] = {
            "rss_mb_first": round(mine[0][1], 1),
            "rss_mb_after_warmup": None if base is None else round(base, 1),
            "rss_mb_end": None if last is None else round(last, 1),
            "rss_mb_max": round(max(v for _, v in mine), 1),
            "growth_pct": growth,
            "within_goal": None if growth is None else growth < RSS_GOAL_PCT,
        }
    return out


def _write_csv(path: Path, t0: float, rows, series: dict[str, list[tuple[float, float]]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t_s", "kind", "name", "value"])
        for t, name, mb in rows:
            w.writerow([round(t - t0, 3), "rss_mb", name, round(mb, 2)])
        for kind, points in series.items():
            for t, ms in points:
                w.writerow([round(t - t0, 3), kind, "", round(ms, 3)])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak and report its figures."""
    from app.pilot import SessionConfig, run_session

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="eegs-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    rounds = max(3, math.ceil(args.minutes * 60 / (cl.LOOP_TRIALS * cl.TRIAL_S)))
    cal = cl.make_calibration_folder(base / "stimuli", 2, args.seed)
    protocol = cl.write_protocol(
        base, calibration=cal, n_calibration=4, pool_size=max(256, 4 * rounds + 64)
    )
    out = base / "session"
    sampler = RssSampler(out, args.sample_s).start()
    t_start = time.time()
    try:
        run_session(
            SessionConfig(
                out=out,
                protocol_path=protocol,
                subject=f"brain-model-{args.seed}",
                rounds=rounds,
                seed=args.seed,
                headless=True,
                timeout_s=args.minutes * 60 * 2 + 600,
            )
        )
    finally:
        sampler.stop()
    events = cl.events(out)
    loop = [e["t_wall"] for e in events if e["event"] == "trial" and e["block"] == "closed_loop"]
    t0 = min(loop, default=t_start) - cl.TRIAL_S  # the loop's first onset, about
    span_s = max(loop, default=t0) - t0
    warmup_s, baseline_s = args.warmup_minutes * 60, args.baseline_minutes * 60
    scaled = span_s < 3 * warmup_s
    if scaled:
        warmup_s = baseline_s = span_s / 3
    window_s = min(60.0, warmup_s)
    series = latency_series(events)
    csv_path = base / "soak-timeseries.csv"
    _write_csv(csv_path, t0, sampler.rows, series)
    processes = rss_growth(sampler.rows, t0, warmup_s, window_s, t_end=max(loop, default=None))
    latencies = {k: compare_p95(v, t0, baseline_s) for k, v in series.items()}
    return {
        "soak": {
            "minutes": args.minutes,
            "loop_minutes": round(span_s / 60, 2),
            "rounds": rounds,
            "trials": sum(e["event"] == "trial" for e in events),
            "epochs": sum(e["event"] == "epoch" for e in events),
            "status": cl.session_status(out),
            "warmup_s": round(warmup_s, 1),
            "baseline_s": round(baseline_s, 1),
            "windows_scaled": scaled,
            "processes": processes,
            **latencies,
            "goals": {
                "rss_growth_below_5_pct": all(
                    p["within_goal"] is not False for p in processes.values()
                ),
                "p95_within_10_pct": all(v["within_goal"] is not False for v in latencies.values()),
            },
            "csv": str(csv_path),
            "session": str(out),
        }
    }
