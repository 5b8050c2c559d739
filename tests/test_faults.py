"""The fault hooks of `eegs bench faults` and what the acquisition makes of NaN samples."""

from __future__ import annotations

import os
import time

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


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs of its own (root only), unmounted when the test ends."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                         capture_output=True, text=True)  # fmt: skip
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(disk) -> None:
    """Fill ``disk`` to its last byte, as another program would."""
    import contextlib

    with contextlib.suppress(OSError), (disk / "filler").open("wb") as fh:
        while True:
            fh.write(b"\0" * (1 << 20))
            fh.flush()
    with contextlib.suppress(OSError), (disk / "filler").open("ab") as fh:
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()


@pytest.mark.timeout(180)
def test_a_full_disk_stops_the_acquisition_cleanly(small_disk, processes, stream_name, free_port):
    """The recording and the epochs closed and readable, the session failed with its reason,
    exit status 74 (no restart), no traceback; a supervisor stops the session for it."""
    import json

    import pyxdf
    from helpers import events_named, wait_for_event, wait_until
    from lsl_source import NoiseSource

    from app.supervisor import DiskFull, Supervisor
    from workers.errors import DISK_FULL_STATUS

    source = NoiseSource(stream_name, ["Fz", "Cz", "Pz"], 250.0).start()
    session = small_disk / "session"
    try:
        acquire = processes.eegs(
            "acquire", "--session", str(session), "--eeg", stream_name,
            "--markers", f"{stream_name}-markers", "--tmin", "-0.1", "--tmax", "0.2",
            "--endpoint", f"tcp://127.0.0.1:{free_port}",
        )  # fmt: skip
        wait_for_event(session, "recording_started", timeout=90, proc=acquire)
        assert events_named(session, "disk_low")  # 64 MiB < warn_free_mb: told at once
        for trial in range(3):
            source.marker({"event": "stimulus_onset", "trial": trial})
            time.sleep(0.3)
        wait_until(lambda: len(events_named(session, "epoch")) == 3, 30)
        # LabRecorder writes each stream's samples every 500 ms: what a full disk takes from
        # a recording is what it had not written yet, so the markers are given time to land
        time.sleep(2.0)
        _fill(small_disk)
        assert acquire.wait(30) == DISK_FULL_STATUS
        err = acquire.stderr.read()
        assert "Traceback" not in err
        assert "disk is full" in err
    finally:
        source.stop()
    (event,) = events_named(session, "disk_full")
    assert event["process"] == "acquisition"
    assert event["recording"] == "recording.xdf"
    assert events_named(session, "recording_stopped")  # the recorder closed its file
    info = json.loads((session / "session.json").read_text())
    assert info["status"] == "failed"  # eegs acquire owns this session
    assert [e.trial_id for e in SessionStore(session).epochs()] == [0, 1, 2]
    streams, _ = pyxdf.load_xdf(str(session / "recording.xdf"))
    eeg = next(s for s in streams if s["info"]["type"][0] == "EEG")
    assert len(eeg["time_stamps"]) > 250  # seconds of EEG, read back
    markers = next(s for s in streams if s["info"]["type"][0] == "Markers")
    assert [json.loads(m[0])["trial"] for m in markers["time_series"]] == [0, 1, 2]

    # the experimenter's dashboard shows both as alerts
    from app.dashboard.view import View

    view = View(session, live=False)
    view.tick()
    texts = [(a["level"], a["text"]) for a in view.alerts]
    assert any(level == "error" and "eegs resume" in t and "--to" in t for level, t in texts)
    assert any(level == "warning" and t.startswith("disk low") for level, t in texts)

    # the session process sees the status and stops the session instead of restarting
    owner = SessionStore(small_disk / "owner")
    (small_disk / "filler").unlink()
    owner.open(role="test")
    _fill(small_disk)
    sup = Supervisor(owner)
    sup.start("keys", ["keys", "--dir", str(small_disk / "owner" / "keys"), "a", "b"],
              restarts=3)  # fmt: skip
    wait_until(lambda: sup.children["keys"].proc.poll() is not None, 60)
    with pytest.raises(DiskFull) as crashed:
        sup.check()
    assert crashed.value.returncode == DISK_FULL_STATUS
    assert "is full" in crashed.value.reason
    assert not events_named(small_disk / "owner", "child_restarted")
    owner.close("failed")
