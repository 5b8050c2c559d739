"""Restarts within a session: real children SIGKILLed by pid, lost trials flagged, fault bench."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import time

import numpy as np
import pytest

from app.bench import _closed_loop as cl
from app.restarts import RestartWatch, account_lost_trials, summarize_losses
from app.supervisor import ProcessCrashed, Supervisor
from experiment_protocols import load_protocol
from experiment_protocols.schema import PROTOCOL_DIR
from workers.session_store import SessionStore


def _kill_children_of(session):
    """Finalizer: SIGKILL every child a session started, by pid."""
    if (session / "events.jsonl").exists():
        for pid in cl.child_pids(session).values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


@pytest.mark.timeout(120)
def test_a_restartable_child_is_restarted_then_given_up_on(tmp_path, stream_name):
    store = SessionStore(tmp_path / "s").open(role="supervisor")
    sup = Supervisor(store)
    try:
        args = ["brain-model", "--name", stream_name, "--markers", f"{stream_name}-m"]
        first = sup.start("bm", [*args, "--channels", "Fz,Cz"], restarts=1)
        time.sleep(1.0)
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        sup.check()  # restarts it
        second = sup.children["bm"]
        assert second.proc.pid != first.proc.pid
        assert second.proc.poll() is None
        (restarted,) = [e for e in store.events() if e["event"] == "child_restarted"]
        assert restarted["name"] == "bm"
        assert restarted["returncode"] == -signal.SIGKILL
        assert restarted["attempt"] == 1
        assert restarted["downtime_s"] >= 0
        os.kill(second.proc.pid, signal.SIGKILL)
        second.proc.wait(10)
        with pytest.raises(ProcessCrashed):  # its one restart is used up
            sup.check()
    finally:
        for child in list(sup.children.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
        sup.stop_all(grace_s=2)
        store.close()


@pytest.mark.timeout(60)
def test_trials_shown_while_the_acquisition_was_down_are_flagged(tmp_path):
    protocol = load_protocol(PROTOCOL_DIR / "pilot.toml")
    store = SessionStore(tmp_path / "s").open(role="session")
    t0 = time.time()
    for trial in (0, 1, 5):
        meta = {"trial_id": trial, "marker": {}, "ch_names": ["Cz"], "sfreq": 250.0, "tmin": 0}
        store.write_epoch(trial, np.zeros((1, 10), np.float32), meta)
        store.log("epoch", trial_id=trial, latency_ms=5.0, bad=False)
        store.log("reward", trial_id=trial, reward=0.5, used=True)
    for trial in range(6):
        store.log("trial", trial=trial, block="closed_loop", round=trial // 3, image="x.png")
    store.log("epoch_lost", trial_id=4, reason="gap in EEG within window")
    store.log("child_restarted", name="acquire", returncode=-9, t_crash_wall=t0, downtime_s=5)
    lost = account_lost_trials(store, protocol)
    assert {r["trial"]: r["reason"] for r in lost} == {
        2: "acquisition restarting: no epoch",
        3: "acquisition restarting: no epoch",
        4: "epoch lost: gap in EEG within window",
    }
    assert account_lost_trials(store, protocol) == []  # flagged once
    summary = summarize_losses(list(store.events()))
    assert summary["n_trials_lost"] == 3
    assert [r["trial"] for r in summary["trials_lost"]] == [2, 3, 4]
    assert summary["children_restarted"][0]["name"] == "acquire"
    store.close()


@pytest.mark.timeout(600)
def test_worker_sigkill_mid_round_loses_no_trial(tmp_path):
    from app.bench.faults import run_fault

    work = tmp_path / "worker_kill"
    try:
        result = run_fault("worker_kill", work, rounds=3)
    finally:
        _kill_children_of(work / "session")
    for key in ("trials_completed", "trials_lost", "epochs_lost", "recovery_s", "files_readable"):
        assert key in result, result
    assert result["status"] == "completed", result
    assert result["trials_lost"] == 0, result
    assert result["trials_completed"] == result["trials_shown"] == 4 + 3 * cl.LOOP_TRIALS
    assert result["files_readable"], result["files"]
    (restart,) = result["restarts"]
    assert restart["name"] == "worker"
    assert restart["returncode"] == -signal.SIGKILL
    assert result["recovery_s"] is not None
    json.dumps({"faults": {"worker_kill": result}})  # the bench's JSON
    summary = json.loads((work / "session" / "summary.json").read_text())
    assert summary["n_trials_lost"] == 0
    assert summary["children_restarted"][0]["name"] == "worker"


@pytest.mark.timeout(600)
def test_soak_reports_memory_and_latency_over_time(tmp_path):
    from app.bench import soak

    args = argparse.Namespace(
        minutes=0.5,
        warmup_minutes=5.0,
        baseline_minutes=5.0,
        sample_s=1.0,
        seed=0,
        dir=tmp_path / "soak",
    )
    try:
        result = soak.run(args)["soak"]
    finally:
        _kill_children_of(tmp_path / "soak" / "session")
    assert result["status"] == "completed"
    assert result["windows_scaled"]  # half a minute: windows are a third of the run
    assert {"session", "acquire", "worker", "present", "brain-model"} <= set(result["processes"])
    for figures in result["processes"].values():
        assert figures["rss_mb_max"] > 0
    for key in ("epoch_latency_ms", "round_ready_latency_ms"):
        assert {"p95_first", "p95_rest", "ratio", "within_goal"} <= set(result[key])
    assert result["epoch_latency_ms"]["n_first"] + result["epoch_latency_ms"]["n_rest"] > 0
    ready = result["round_ready_latency_ms"]
    assert ready["n_first"] + ready["n_rest"] > 0
    assert min(v for v in (ready["p95_first"], ready["p95_rest"]) if v is not None) > 0
    assert set(result["goals"]) == {"rss_growth_below_5_pct", "p95_within_10_pct"}
    with open(result["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert {r["kind"] for r in rows} >= {"rss_mb", "epoch_latency_ms"}


@pytest.mark.timeout(30)
def test_the_presentation_sees_a_worker_being_restarted(tmp_path):
    store = SessionStore(tmp_path / "s").open(role="session")
    watch = RestartWatch(tmp_path / "s")
    assert not watch.restarting("worker", grace_s=60)
    store.log("child_crashed", name="worker", returncode=-9, restarting=True, attempt=1)
    assert watch.restarting("worker")
    store.log("child_restarted", name="worker", returncode=-9, attempt=1, downtime_s=30.0)
    assert watch.restarting("worker", grace_s=60)  # back, its first batch not yet made
    assert not watch.restarting("worker")
    store.close()
