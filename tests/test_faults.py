"""The fault hooks of `eegs bench faults` and what the acquisition makes of NaN samples."""

from __future__ import annotations

import os

import numpy as np
import pytest

from experiment_protocols import load_protocol
from experiment_protocols.schema import PROTOCOL_DIR
from workers import faults
from workers.acquisition import assess_quality
from workers.session_store import EventTail, SessionStore


@pytest.mark.timeout(30)
def test_nan_samples_flag_the_epoch_by_channel():
    protocol = load_protocol(PROTOCOL_DIR / "pilot.toml")
    x = np.random.default_rng(0).normal(0, 10, (3, 250))
    x[1, 100:120] = np.nan
    quality = assess_quality(x, ["Fz", "Cz", "Pz"], protocol)
    assert "nonfinite" in quality["flags"]
    assert quality["channels"]["nonfinite"] == ["Cz"]
    assert np.isfinite(quality["max_ptp_uv"])


@pytest.mark.timeout(30)
def test_fault_files_turn_faults_on_only_when_the_bench_names_a_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(faults.FAULTS_ENV, raising=False)
    assert not faults.active("nan")
    monkeypatch.setenv(faults.FAULTS_ENV, str(tmp_path))
    faults._seen.clear()
    assert not faults.active("nan")
    (tmp_path / "marker_restart").touch()
    assert faults.take("marker_restart")  # once
    assert not (tmp_path / "marker_restart").exists()
    assert not faults.take("marker_restart")


@pytest.mark.timeout(30)
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_holds_events_in_order_until_there_is_room(tmp_path):
    store = SessionStore(tmp_path / "s").open(role="session")
    real = store._events_fd
    store._events_fd = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
    try:
        store.log("held_1", k=1)
        store.log("held_2", k=2)  # the process goes on
    finally:
        os.close(store._events_fd)
        store._events_fd = real
    store.log("after")
    names = [e["event"] for e in store.events()]
    assert names[-3:] == ["held_1", "held_2", "after"]
    store.close()


@pytest.mark.timeout(30)
def test_a_fragment_line_is_skipped_by_every_reader(tmp_path):
    store = SessionStore(tmp_path / "s").open(role="session")
    tail = EventTail(tmp_path / "s" / "events.jsonl")
    tail.new()
    os.write(store._events_fd, b'{"t_wall": 1, "event": "cut sh\n')  # a line a full disk cut
    store.log("whole")
    assert [e["event"] for e in tail.new()] == ["whole"]
    assert [e["event"] for e in store.events()][-1] == "whole"
    store.close()
