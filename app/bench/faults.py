"""Fault matrix: short closed loops on the brain model, one injected fault each (JSON).

Each fault gets a session of its own (`eegs pilot --headless` on a protocol the bench
writes: a 4-image calibration block, then closed-loop rounds of 8, asymmetry reward, no
rating screen) and is injected once the closed loop is under way (3 trials into round 1):

- ``eeg_drop``: the brain model is stopped (SIGSTOP) for 5 s, then continued: an
  amplifier whose stream stalls and comes back;
- ``marker_restart``: the presentation closes and reopens its marker outlet;
- ``worker_kill``: the worker is SIGKILLed just after the presentation asked for round 2
  (mid-generation); the supervisor restarts it;
- ``acquire_kill``: the acquisition is SIGKILLed (its recorder too); restarted, it
  records into a new XDF part;
- ``session_kill``: the session process is SIGKILLed (its children stop with it), then
  ``eegs resume`` continues the session;
- ``disk_full``: the session lives on its own tmpfs (``mount -t tmpfs``, root only),
  which a filler file fills to the last byte and keeps full. The session must stop by
  itself, cleanly: marked ``failed`` with the reason, every file closed and readable on
  the full disk (``stopped``: ``status``, ``failure``, ``files_readable``, ``stop_s``
  from the disk filling to the session process's end, ``traceback`` in any log). It is
  then resumed on another disk, as a lab would (``eegs resume SESSION --to DIR``), and
  measured there; its ``recovery_s`` runs from that command;
- ``nan_samples``: the brain model sends NaN samples for 3 s;
- ``corrupt_image``: one image of the calibration folder is not an image.

Per fault: ``trials_completed`` (shown trials with a stored, readable epoch),
``trials_lost`` (completed before the fault and gone after, or shown with no epoch or
reward and not flagged in ``events.jsonl``: the goal is 0), ``trials_flagged`` (trials
in flight the session flagged ``trial_lost``: accounted for), ``epochs_lost``
(``epoch_lost`` events), ``recovery_s`` (end of the fault to the first epoch stored and
rewarded after it), ``files_readable`` (every XDF part loads, every epoch file parses, every
event is in ``events.jsonl`` whole (a line a full disk cut short is skipped by the readers
and written again: ``files.events_fragments``), summary.json exists), ``status``,
``restarts``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.bench import _closed_loop as cl
from workers.faults import FAULTS_ENV

_TIMEOUT_S = 900.0


@dataclass
class _Run:
    """One fault's session and what the injection noted."""

    name: str
    work: Path
    out: Path
    faults_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    t_end: float | None = None  # wall time the fault ended
    epochs_before: set[int] = field(default_factory=set)
    notes: dict[str, Any] = field(default_factory=dict)
    resume: bool = False  # the fault ends the session: resume it
    resume_to: Path | None = None  # ... on another disk, this folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("--only", choices=sorted(FAULTS), default=None, help="run one fault")
    p.add_argument("--rounds", type=int, default=4, help="closed-loop rounds per session")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", type=Path, default=None, help="keep the sessions here")


def _mid_loop(run: _Run) -> None:
    """Wait until 3 trials of closed-loop round 1 are shown, note the epochs stored."""
    cl.wait_for(lambda: len(cl.loop_trials(run.out, 1)) >= 3, _TIMEOUT_S, tuple(run.procs))
    run.epochs_before = _readable_epochs(run.out)


def _pid(run: _Run, name: str) -> int:
    return cl.child_pids(run.out)[name]


def _eeg_drop(run: _Run) -> None:
    _mid_loop(run)
    pid = _pid(run, "brain-model")
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(5.0)
    finally:
        os.kill(pid, signal.SIGCONT)
    run.t_end = time.time()


def _marker_restart(run: _Run) -> None:
    _mid_loop(run)
    (run.faults_dir / "marker_restart").touch()
    cl.wait_for(
        lambda: any(e["event"] == "marker_outlet_restarted" for e in cl.events(run.out)), 60
    )
    run.t_end = time.time()


def _worker_kill(run: _Run) -> None:
    def asked() -> bool:
        return any(
            e["event"] == "image_request" and e.get("round") == 2 for e in cl.events(run.out)
        )

    cl.wait_for(asked, _TIMEOUT_S, tuple(run.procs))
    run.epochs_before = _readable_epochs(run.out)
    os.kill(_pid(run, "worker"), signal.SIGKILL)
    run.t_end = time.time()


def _acquire_kill(run: _Run) -> None:
    _mid_loop(run)
    os.kill(_pid(run, "acquire"), signal.SIGKILL)
    run.t_end = time.time()


def _session_kill(run: _Run) -> None:
    _mid_loop(run)
    children = list(cl.child_pids(run.out).values())
    os.kill(run.procs[0].pid, signal.SIGKILL)
    run.procs[0].wait(10)
    cl.wait_for(lambda: not any(_alive(p) for p in children), 60)  # they stop with it
    run.t_end = time.time()
    run.resume = True


def _disk_full(run: _Run) -> None:
    _mid_loop(run)
    filler = run.out.parent / "filler"
    written = 0
    with contextlib.suppress(OSError), filler.open("wb") as fh:
        block = b"\0" * (1 << 20)
        while True:
            fh.write(block)
            fh.flush()
            written += len(block)
    with contextlib.suppress(OSError), filler.open("ab") as fh:  # the last partial block
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()
    t_full = time.time()
    run.notes["filler_mb"] = round(written / 2**20, 1)
    session = run.procs[0]
    with contextlib.suppress(subprocess.TimeoutExpired):  # it stops by itself, or fails here
        session.wait(_TIMEOUT_S)
    stopped = cl.session_info(run.out)
    run.notes["stopped"] = {
        "status": stopped.get("status"),
        "failure": stopped.get("failure"),
        "stop_s": round(time.time() - t_full, 1),
        "files_readable": _files_readable(run.out, summary=False),
        "traceback": _tracebacks(run.work / "session.log", run.out / "logs"),
    }
    run.resume = True
    run.resume_to = run.work / "other-disk"  # the disk stays full: the session moves
    run.t_end = time.time()


def _nan_samples(run: _Run) -> None:
    _mid_loop(run)
    flag = run.faults_dir / "nan"
    flag.touch()
    time.sleep(3.0)
    flag.unlink()
    run.t_end = time.time()


def _corrupt_image(run: _Run) -> None:
    event = cl.wait_for(
        lambda: next((e for e in cl.events(run.out) if e["event"] == "image_failed"), None),
        _TIMEOUT_S,
        tuple(run.procs),
    )
    run.t_end = float(event["t_wall"])
    run.notes["image_failed"] = event.get("reason")


FAULTS: dict[str, Callable[[_Run], None]] = {
    "eeg_drop": _eeg_drop,
    "marker_restart": _marker_restart,
    "worker_kill": _worker_kill,
    "acquire_kill": _acquire_kill,
    "session_kill": _session_kill,
    "disk_full": _disk_full,
    "nan_samples": _nan_samples,
    "corrupt_image": _corrupt_image,
}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False


def _readable_epochs(session: Path) -> set[int]:
    from workers.session_store import SessionStore

    return {ep.trial_id for ep in SessionStore(session).epochs()}


def _tracebacks(*paths: Path) -> list[str]:
    """Log files (or folders of them) that hold a Python traceback."""
    found = []
    for path in paths:
        for log in sorted(path.glob("*.log")) if path.is_dir() else [path]:
            with contextlib.suppress(OSError):
                if b"Traceback (most recent call last)" in log.read_bytes():
                    found.append(log.name)
    return found


def _files_readable(session: Path, *, summary: bool = True) -> dict[str, Any]:
    """Every recording part, epoch file, event line and (``summary``) the summary, read back."""
    import json

    import pyxdf

    from workers.session_store import recording_files

    out: dict[str, Any] = {"xdf": {}}
    for path in recording_files(session):
        try:
            streams, _ = pyxdf.load_xdf(str(path))
            kinds = sorted({s["info"]["type"][0] for s in streams})
            out["xdf"][path.name] = kinds
        except Exception as err:  # noqa: BLE001 - any failure is the figure
            out["xdf"][path.name] = f"unreadable: {type(err).__name__}: {err}"
    files = sorted((session / "epochs").glob("epoch-*.npz"))
    out["epoch_files"] = len(files)
    out["epoch_files_unreadable"] = len(files) - len(_readable_epochs(session))
    whole, cut = [], []
    with (session / "events.jsonl").open("rb") as fh:
        for line in fh:
            try:
                whole.append(line) if isinstance(json.loads(line), dict) else cut.append(line)
            except ValueError:
                cut.append(line.rstrip(b"\n"))
    # a line a full disk cut short is skipped by every reader and written again whole
    out["events_fragments"] = len(cut)
    out["events_lost"] = sum(not any(w.startswith(f) for w in whole) for f in cut if f.strip())
    try:
        json.loads((session / "summary.json").read_text())
        out["summary"] = True
    except (OSError, ValueError):
        out["summary"] = False
    out["ok"] = bool(
        out["xdf"]
        and all(isinstance(v, list) and "EEG" in v for v in out["xdf"].values())
        and not out["epoch_files_unreadable"]
        and not out["events_lost"]
        and (out["summary"] or not summary)
    )
    return out


def measure(run: _Run) -> dict[str, Any]:
    """The fault's figures, read from its session directory."""
    events = cl.events(run.out)
    shown = {e["trial"] for e in events if e["event"] == "trial"}
    stored = _readable_epochs(run.out)
    flagged = {e["trial"] for e in events if e["event"] == "trial_lost"}
    taken_by = ("reward", "calibration_epoch", "epoch_parked")
    taken = {e["trial_id"] for e in events if e["event"] in taken_by}
    completed = shown & stored
    silent = (shown - stored - flagged) | ((completed - taken) - flagged)
    gone = run.epochs_before - stored
    recovery = None
    if run.t_end is not None:
        after = [e for e in events if e["t_wall"] > run.t_end]
        first_epoch = next((e["t_wall"] for e in after if e["event"] == "epoch"), None)
        first_reward = next((e["t_wall"] for e in after if e["event"] == "reward"), None)
        if first_epoch is not None and first_reward is not None:
            recovery = round(max(first_epoch, first_reward) - run.t_end, 2)
    files = _files_readable(run.out)
    return {
        "trials_completed": len(completed),
        "trials_lost": len(silent | gone),
        "trials_flagged": len(flagged),
        "epochs_lost": sum(e["event"] == "epoch_lost" for e in events),
        "recovery_s": recovery,
        "files_readable": files["ok"],
        "trials_shown": len(shown),
        "status": cl.session_status(run.out),
        "restarts": [
            {k: e.get(k) for k in ("name", "returncode", "attempt", "downtime_s")}
            for e in events
            if e["event"] == "child_restarted"
        ],
        "lost_trial_ids": sorted(silent | gone),
        "flagged": [
            {k: e.get(k) for k in ("trial", "reason")} for e in events if e["event"] == "trial_lost"
        ],
        "files": files,
        **run.notes,
    }


def run_fault(name: str, work: Path, *, rounds: int = 4, seed: int = 0) -> dict[str, Any]:
    """One session with fault ``name`` injected; its figures."""
    work.mkdir(parents=True, exist_ok=True)
    cal = cl.make_calibration_folder(work / "stimuli", 2, seed)
    if name == "corrupt_image":  # a PNG signature, then garbage: not decodable
        (cal / "amusement" / "calibration-amusement-corrupt.png").write_bytes(
            b"\x89PNG\r\n\x1a\n" + os.urandom(2000)
        )
    n_cal = sum(1 for p in cal.rglob("*.png"))
    protocol = cl.write_protocol(work, calibration=cal, n_calibration=n_cal)
    root, mounted = work, False
    if name == "disk_full":
        root = work / "disk"
        root.mkdir(exist_ok=True)
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=192m", "tmpfs", str(root)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            return {"skipped": f"cannot mount a tmpfs: {res.stderr.strip()}"}
        mounted = True
    run = _Run(name, work, root / "session", work / "faults")
    run.faults_dir.mkdir(exist_ok=True)
    env = {FAULTS_ENV: str(run.faults_dir)}
    t0 = time.time()
    try:
        log = work / "session.log"  # beside the tmpfs, not on it
        pilot = cl.start_pilot(run.out, protocol, rounds, seed=seed, env=env, log_file=log)
        run.procs.append(pilot)
        FAULTS[name](run)
        for proc in run.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.wait(_TIMEOUT_S)
        if run.resume and cl.session_status(run.out) != "completed":
            run.notes["resumed"] = True
            if run.resume_to is not None:
                run.notes["resumed_on"] = str(run.resume_to)
            run.t_end = run.t_end if run.resume_to is None else time.time()
            resume = cl.start_resume(run.out, env, log_file=log, to=run.resume_to)
            run.procs.append(resume)
            resume.wait(_TIMEOUT_S)
            if run.resume_to is not None:  # measured where it went on
                run.out = run.resume_to / run.out.name
        result = measure(run)
        result["wall_s"] = round(time.time() - t0, 1)
        result["session"] = str(run.out)
        if mounted and run.out.is_relative_to(root):  # keep it: copied off the tmpfs
            shutil.copytree(run.out, work / "session", dirs_exist_ok=True)
            result["session"] = str(work / "session")
        return result
    finally:
        cl.kill_session(run.out, run.procs)
        if mounted:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen faults one after another."""
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="eegs-faults-"))
    names = [args.only] if args.only else list(FAULTS)
    results = {}
    for name in names:
        try:
            results[name] = run_fault(name, base / name, rounds=args.rounds, seed=args.seed)
        except (RuntimeError, TimeoutError, OSError) as err:  # this fault's session failed
            results[name] = {"error": f"{type(err).__name__}: {err}", "dir": str(base / name)}
    return {"faults": results}
