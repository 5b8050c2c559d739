"""Shared by `eegs bench faults`, `soak` and `pilots`: a real session, watched from outside.

The benches write a small protocol (the pilot protocol with the reward it runs for a
participant who gives no ratings, the asymmetry index; no rating screen, a short
calibration block from a folder the bench makes, and as many closed-loop rounds as
asked), run it with ``eegs pilot --headless`` as a child process (the brain model as
participant), and read what happened from the session directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.session_store import read_events

REPO = Path(__file__).resolve().parents[2]
#: Seconds per trial of the bench protocol (fixation 0.3, stimulus 1.0, ITI 0.3, flips).
TRIAL_S = 1.65
LOOP_TRIALS = 8


def write_protocol(
    folder: Path, *, calibration: Path, n_calibration: int, pool_size: int = 256
) -> Path:
    """The bench protocol (``folder/bench.toml``), its calibration block from ``calibration``."""
    from app.pilot import PILOT_PROTOCOL, write_protocol
    from experiment_protocols import load_protocol

    base = load_protocol(PILOT_PROTOCOL)
    blocks = []
    for block in base.presentation.model_dump()["blocks"]:
        if block["kind"] == "calibration":
            blocks.append({**block, "n_trials": n_calibration, "folder": str(calibration)})
        elif block["kind"] == "closed_loop":
            blocks.append({**block, "n_trials": LOOP_TRIALS})
    gen = base.generation.model_dump()
    # what the pilot's reward runs as without ratings (the personal reward's fallback
    # index): no rating screen needed
    gen["reward"] = base.generation.reward.without_ratings().model_dump()
    gen["heuristic"]["patience"] = 100_000  # every round asked for is run
    gen["procedural"]["pool_size"] = pool_size
    ratings = {**base.presentation.ratings.model_dump(), "enabled": False}
    protocol = base.with_overrides(
        {"presentation.blocks": blocks, "presentation.ratings": ratings, "generation": gen}
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_protocol(protocol, folder / "bench.toml")
    return folder / "bench.toml"


def make_calibration_folder(folder: Path, n_per_class: int, seed: int = 0) -> Path:
    """Labelled procedural images, as `eegs pilot` makes them."""
    from app.pilot import make_labelled_sets

    return make_labelled_sets(folder, {"calibration": n_per_class}, seed)["calibration"]


def start_pilot(
    out: Path,
    protocol: Path,
    rounds: int,
    *,
    seed: int = 0,
    env: dict[str, str] | None = None,
    log_file: Path | None = None,
) -> subprocess.Popen:
    """``eegs pilot --headless`` on the bench protocol, output in ``log_file`` (``OUT.log``)."""
    log = open(log_file or f"{out}.log", "ab")  # noqa: SIM115 - the child holds it
    args = ["pilot", "--out", str(out), "--protocol", str(protocol), "--rounds", str(rounds)]
    return _start([*args, "--seed", str(seed), "--headless"], log, env)


def start_resume(
    session: Path,
    env: dict[str, str] | None = None,
    log_file: Path | None = None,
    to: Path | None = None,
) -> subprocess.Popen:
    """``eegs resume SESSION --headless [--to DIR]``, output in ``log_file`` (``SESSION.log``)."""
    log = open(log_file or f"{session}.log", "ab")  # noqa: SIM115
    more = [] if to is None else ["--to", str(to)]
    return _start(["resume", str(session), "--headless", *more], log, env)


def _start(args: list[str], log, env: dict[str, str] | None) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    log.close()
    return proc


def events(session: Path) -> list[dict[str, Any]]:
    """Every event of the session so far."""
    return list(read_events(Path(session) / "events.jsonl"))


def child_pids(session: Path) -> dict[str, int]:
    """Each supervised child's newest pid (``child_started``)."""
    return {e["name"]: e["pid"] for e in events(session) if e["event"] == "child_started"}


def wait_for(
    predicate: Callable[[], Any], timeout: float, procs: tuple[subprocess.Popen, ...] = ()
) -> Any:
    """Poll ``predicate`` until it returns something true; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if any(p.poll() is not None for p in procs):
            value = predicate()
            if value:
                return value
            raise RuntimeError(f"the session process ended ({procs[0].returncode}) first")
        time.sleep(0.2)
    raise TimeoutError(f"not reached within {timeout:.0f} s")


def loop_trials(session: Path, round_: int) -> list[dict[str, Any]]:
    """The closed-loop trials of one round shown so far."""
    return [
        e
        for e in events(session)
        if e["event"] == "trial" and e.get("block") == "closed_loop" and e.get("round") == round_
    ]


def kill_session(session: Path, procs: list[subprocess.Popen]) -> None:
    """SIGKILL every process of a bench session: its children's groups, then its own."""
    if Path(session).exists():
        for pid in child_pids(session).values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def session_info(session: Path) -> dict[str, Any]:
    """``session.json`` ({} if unreadable)."""
    from workers.session_store import SessionStore

    with contextlib.suppress(ValueError):
        return SessionStore(session).read_info()
    return {}


def session_status(session: Path) -> str | None:
    """``session.json``'s status."""
    return session_info(session).get("status")
