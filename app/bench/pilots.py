"""Live closed-loop pilots over seeds: the README's main job, repeated, with its gains.

Runs ``eegs pilot --seed S --headless`` (the whole session: brain model, acquisition,
worker, PsychoPy presentation, ratings, report) as a person starts it, in a process of
its own, for each seed in turn, never two at once (each pilot is real-time and wants the
machine). From each ``summary.json`` it reads the loop's gains against the brain model's
hidden valence, defined as in ``eegs bench loop`` (:mod:`app.loop_gains`): (a) last two
rounds minus round 0, (b) the images the loop chose minus the random ones shown beside
them. Reported: per seed, and over seeds the means with 95 % t-intervals, the share
above zero, the number of seeds whose gain (b) is positive (issue 14's live goal: at
least 8 of 10) and each pilot's minutes; and whether the participant ever waited: each
pilot's ``image_late`` events (goal: none in any pilot) and its round-ready latency's
p95, round 1 included (goal: <= 100 ms in every pilot).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from app.bench._closed_loop import kill_session
from app.bench._progress import report
from app.bench._stats import stats
from app.reward_option import add_reward_argument
from experiment_protocols.brain_model import SUBJECT_FAMILIES

REPO = Path(__file__).resolve().parents[2]
GOAL_GAIN_B_POSITIVE = 0.8  # share of seeds with gain (b) > 0
GOAL_ROUND_READY_P95_MS = 100.0  # in every pilot, round 1 included


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("--seeds", type=int, default=10, help="seeds 0 .. N-1 (after --first-seed)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--protocol", type=Path, default=None, help="default: pilot.toml")
    p.add_argument("--rounds", type=int, default=None, help="closed-loop rounds, round 0 included")
    p.add_argument(
        "--family",
        choices=tuple(SUBJECT_FAMILIES),
        default=None,
        help="brain_model.family (default: the protocol's)",
    )
    add_reward_argument(p)
    p.add_argument("--no-dashboard", action="store_true", help="pilots without the dashboard")
    p.add_argument("--dir", type=Path, default=None, help="keep the sessions here")


def _pilot_argv(args: argparse.Namespace, seed: int, out: Path) -> list[str]:
    argv = [sys.executable, "-m", "app.cli", "pilot", "--out", str(out), "--seed", str(seed)]
    argv += ["--headless"]
    if args.protocol is not None:
        argv += ["--protocol", str(args.protocol)]
    if args.rounds is not None:
        argv += ["--rounds", str(args.rounds)]
    if args.family is not None:
        argv += ["--family", args.family]
    if args.reward is not None:
        argv += ["--reward", args.reward]
    if args.no_dashboard:
        argv += ["--no-dashboard"]
    return argv


def _run_pilot(argv: list[str], session: Path, log: Path) -> int:
    """One ``eegs pilot`` in its own process group, stopped if we are.

    SIGINT first (the pilot saves the session and stops its children); a pilot still
    running 60 s later is killed with every child group it started (``kill_session``).
    """
    with log.open("w") as fh:
        proc = subprocess.Popen(
            argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return proc.wait()
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    kill_session(session, [proc])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the pilots one after the other and summarise their gains."""
    from workers.errors import InputError

    if args.seeds < 1:
        raise InputError("--seeds must be at least 1")
    keep = args.dir is not None
    base = Path(args.dir) if keep else Path(tempfile.mkdtemp(prefix="eegs-pilots-"))
    base.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    taken = [s for s in seeds if (base / f"seed-{s}").exists()]
    if taken:
        raise InputError(f"{base}: seed-{taken[0]} exists already: choose a new --dir")
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    try:
        for k, seed in enumerate(seeds, 1):
            out = base / f"seed-{seed}"
            t0 = time.perf_counter()
            rc = _run_pilot(_pilot_argv(args, seed, out), out, base / f"seed-{seed}.log")
            if rc != 0:  # counted, and the other seeds still run
                where = f"{base}/seed-{seed}.log" if keep else "pass --dir to keep its log"
                rows.append({"seed": seed, "error": f"exit status {rc} ({where})"})
                report("pilots", k, len(seeds), f"seed {seed}: FAILED, status {rc}", t_all)
                continue
            summary = json.loads((out / "summary.json").read_text())
            gains = summary.get("oracle_valence_gains") or {}
            personal = summary.get("personal_estimator") or {}
            rows.append(
                {
                    "seed": seed,
                    "minutes": round((time.perf_counter() - t0) / 60, 2),
                    "gain_a": gains.get("gain_a"),
                    "gain_b": gains.get("gain_b"),
                    "curve": gains.get("curve"),
                    "reward": personal.get("reward", summary.get("reward_mode")),
                    "dropped_frames": summary.get("dropped_frames"),
                    "epoch_latency_p95_ms": (summary.get("epoch_latency_ms") or {}).get("p95"),
                    "image_late": summary.get("image_late"),
                    "round_ready_p95_ms": (summary.get("round_ready_latency_ms") or {}).get("p95"),
                }
            )
            report(
                "pilots", k, len(seeds), f"seed {seed}: gain (a) {gains.get('gain_a')}, (b) "
                f"{gains.get('gain_b')}, image_late {rows[-1]['image_late']}, round-ready p95 "
                f"{rows[-1]['round_ready_p95_ms']} ms, {rows[-1]['minutes']} min", t_all,
            )  # fmt: skip
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    return summarise(rows, str(base) if keep else None)


def summarise(rows: list[dict[str, Any]], sessions: str | None) -> dict[str, Any]:
    """Gains over seeds and the live goals."""
    a, b = stats(r.get("gain_a") for r in rows), stats(r.get("gain_b") for r in rows)
    b_pos = sum(1 for r in rows if r.get("gain_b") is not None and r["gain_b"] > 0)
    minutes = [r["minutes"] for r in rows if "minutes" in r]
    failed = [r["seed"] for r in rows if "error" in r]
    n = len(rows)
    ready = [r.get("round_ready_p95_ms") for r in rows]
    late = [r.get("image_late") for r in rows]
    return {
        "benchmark": "pilots",
        "n": n,
        "failed_seeds": failed,
        "gain_a_mean": a["mean"],
        "gain_a_ci95": a["ci95"],
        "gain_a_share_gt_0": a["share_gt_0"],
        "gain_b_mean": b["mean"],
        "gain_b_ci95": b["ci95"],
        "gain_b_positive": f"{b_pos} of {n}",  # a failed pilot counts against
        "minutes_max": max(minutes, default=None),
        "image_late_total": sum(k for k in late if k is not None),
        "round_ready_p95_ms_max": max((v for v in ready if v is not None), default=None),
        "goals": {  # a pilot that failed (or lacks the figure) counts against each
            "gain_b_positive_share_ge_0.8": n > 0 and b_pos / n >= GOAL_GAIN_B_POSITIVE,
            "no_image_late_in_any_pilot": n > 0 and all(k == 0 for k in late),
            "round_ready_p95_le_100_ms_in_every_pilot": n > 0
            and all(v is not None and v <= GOAL_ROUND_READY_P95_MS for v in ready),
        },
        "per_seed": rows,
        "sessions": sessions,
    }
