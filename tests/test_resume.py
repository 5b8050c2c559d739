"""`eegs resume`: a session whose process is SIGKILLed mid-round is completed, nothing lost,
also after it was moved by hand and resumed on another disk (``--to``).

(A worker SIGKILLed mid-round no longer ends the session: the supervisor restarts it,
tests/test_restarts.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import pyxdf
from conftest import run_eegs
from helpers import events_named, short_pilot_protocol, wait_until

from experiment_protocols import load_protocol
from workers.session_store import SessionStore, recording_files

pytestmark = pytest.mark.timeout(900)

N_LOOP = 8  # images per closed-loop round in pilot.toml
RESHOW = 'late_image_policy = "wait"'


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"  # not a zombie
    except (ProcessLookupError, FileNotFoundError):
        return False


def _loop_trials(session, round_: int) -> list[dict]:
    return [
        e
        for e in events_named(session, "trial")
        if e["block"] == "closed_loop" and e["round"] == round_
    ]


def test_session_killed_mid_round_then_resumed(tmp_path, processes):
    out = tmp_path / "session"
    log = (tmp_path / "pilot.log").open("w")
    pilot = processes.eegs(
        "pilot",
        "--out",
        str(out),
        "--rounds",
        "3",
        "--seed",
        "5",
        "--headless",
        "--protocol",
        # the trial in flight is not shown again, so that every round has its 8 images
        str(short_pilot_protocol(tmp_path, **{RESHOW: RESHOW + "\nreshow_lost_trials = false"})),
        stdout=log,
        stderr=log,
    )
    # mid-round: some, not all, of closed-loop round 1 shown
    wait_until(lambda: len(_loop_trials(out, 1)) >= 2 or pilot.poll() is not None, timeout=500)
    assert pilot.poll() is None, (tmp_path / "pilot.log").read_text()[-3000:]
    children = [e["pid"] for e in events_named(out, "child_started")]
    for pid in children:
        processes.adopt(pid)  # killed by pid when the test ends, whatever happens
    os.kill(pilot.pid, signal.SIGKILL)
    t_kill = time.time()
    pilot.wait(30)
    log.close()
    wait_until(lambda: not any(_alive(pid) for pid in children), timeout=60)  # they stop too
    info = json.loads((out / "session.json").read_text())
    assert info["status"] == "running"  # nobody closed it: resumable
    assert not events_named(out, "child_crashed")
    before = {e["trial"]: e for e in events_named(out, "trial")}
    assert 2 <= len(_loop_trials(out, 1)) < N_LOOP
    epochs_before = {e.trial_id for e in SessionStore(out).epochs()}

    # the lab moves the session off its disk by hand, then resumes it on another one
    recorded_at, moved = out.resolve(), tmp_path / "moved" / "session"
    moved.parent.mkdir()
    shutil.move(out, moved)
    res = run_eegs("resume", str(moved), "--headless", "--to", str(tmp_path / "other"),
                   timeout=840)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "other" / "session"
    assert json.loads((moved / "session.json").read_text())["status"] == "running"  # untouched
    assert not (moved / "recording-part2.xdf").exists()
    info = json.loads((out / "session.json").read_text())
    assert info["status"] == "completed"
    assert info["moved_from"] == str(recorded_at)
    assert info["root"] == str(out.resolve())
    # the pilot's own stimulus folders are read where the session is now
    folders = [b.folder for b in load_protocol(out / "protocol.toml").presentation.blocks]
    assert all(f.startswith(str(out.resolve())) for f in folders if f), folders

    trials = events_named(out, "trial")
    ids = [e["trial"] for e in trials]
    assert len(ids) == len(set(ids)), "a trial id was used twice"
    after = {e["trial"]: e for e in trials}
    here = str(out.resolve())
    for tid, e in before.items():  # nothing shown before the crash is lost or rewritten
        assert after[tid]["image"] == e["image"].replace(str(recorded_at), here)  # read here
    images = [e["image"] for e in trials if not e.get("stand_in")]
    assert len(images) == len(set(images)), "an image was shown twice"
    per_round = Counter((e["block"], e["round"]) for e in trials)
    assert per_round[("calibration", 0)] == 8
    assert per_round[("validation", 0)] == 4
    loop_rounds = sorted(r for b, r in per_round if b == "closed_loop")
    assert loop_rounds[:2] == [0, 1]
    assert loop_rounds == list(range(len(loop_rounds)))
    for r in loop_rounds:
        assert per_round[("closed_loop", r)] == N_LOOP, per_round

    # every trial has its epoch and its reward; epochs from before the crash are kept
    stored = {e.trial_id for e in SessionStore(out).epochs()}
    assert set(after) <= stored
    assert epochs_before <= stored
    cut_short = {e.get("trial") for e in events_named(out, "abort")}
    assert stored - set(after) <= cut_short  # an extra epoch only for a trial cut short
    rewarded = Counter(e["trial_id"] for e in events_named(out, "reward") if e["used"])
    assert set(after) <= set(rewarded)
    assert max(rewarded.values()) == 1

    # the new worker took over the old one's state; the new recording is a second part
    restored = events_named(out, "generation_restored")
    assert len(restored) == 1
    assert restored[0]["rewards"] >= 8 + N_LOOP
    assert restored[0]["issued"] >= N_LOOP
    assert [p.name for p in recording_files(out)] == ["recording.xdf", "recording-part2.xdf"]
    # the second part records every marker of the resumed run, from its first trial
    t_resume = events_named(out, "session_resumed")[0]["t_wall"]
    sent = [
        e["marker"]["trial"]
        for e in events_named(out, "marker_sent")
        if e["t_wall"] > t_resume and e["marker"]["event"] == "stimulus_onset"
    ]
    streams, _ = pyxdf.load_xdf(str(out / "recording-part2.xdf"))
    markers = next(s for s in streams if s["info"]["type"][0] == "Markers")
    recorded = [json.loads(m[0]) for m in markers["time_series"]]
    assert [m["trial"] for m in recorded if m["event"] == "stimulus_onset"] == sent
    resumed = events_named(out, "round_resumed")
    assert any(e["block"] == "closed_loop" and e["round"] == 1 for e in resumed)
    assert all(e["t_wall"] > t_kill for e in resumed)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_trials"] == 8 + len(loop_rounds) * N_LOOP + 4

    # each recording part is a BIDS run of its own
    res = run_eegs("export-bids", str(out), str(tmp_path / "bids"), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    vhdr = sorted(p.name for p in (tmp_path / "bids").rglob("*_eeg.vhdr"))
    assert [name.split("_run-")[1][:1] for name in vhdr] == ["1", "2"]

    # a completed session has nothing left to resume
    res = run_eegs("resume", str(out), "--headless")
    assert res.returncode == 2
    assert "nothing to resume" in res.stderr
