"""`eegs acquire` against real LSL sources on loopback, as a real process."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pylsl
import pytest
import zmq
from helpers import events_named, wait_for_event, wait_until
from lsl_source import NoiseSource

from workers.messages import EpochMessage, decode
from workers.session_store import SessionStore, read_events

CHANNELS = ["Fz", "Cz", "Pz", "Oz"]


def _acquire(processes, tmp_path, name, free_port, *extra):
    session = tmp_path / "session"
    proc = processes.eegs(
        "acquire",
        "--session",
        str(session),
        "--eeg",
        name,
        "--markers",
        f"{name}-markers",
        "--tmin",
        "-0.1",
        "--tmax",
        "0.3",
        "--endpoint",
        f"tcp://127.0.0.1:{free_port}",
        "--no-record",
        *extra,
    )
    return session, proc


def _subscriber(port: int) -> zmq.Socket:
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(f"tcp://127.0.0.1:{port}")
    return sub


def _receive(sub: zmq.Socket, n: int, timeout: float = 10.0) -> list[EpochMessage]:
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        if sub.poll(100):
            out.append(decode(sub.recv_multipart())[0])
    return out


def test_epochs_are_cut_stored_flagged_and_published(processes, tmp_path, stream_name, free_port):
    src = NoiseSource(stream_name, CHANNELS, sfreq=500.0).start()
    try:
        session, proc = _acquire(processes, tmp_path, stream_name, free_port)
        wait_for_event(session, "acquisition_ready", proc=proc)
        sub = _subscriber(free_port)
        time.sleep(0.5)  # PUB/SUB join
        src.marker("{not json")  # malformed: logged and skipped
        src.marker({"no_event": 1})
        src.marker({"event": "fixation_onset", "trial": 0})  # not epoched
        t_marks = []
        for k in range(3):
            t_marks.append(src.marker({"event": "stimulus_onset", "trial": 10 + k}))
            time.sleep(0.2)
        got = _receive(sub, 3)
        assert [m.trial_id for m in got] == [10, 11, 12]
        assert all(m.sfreq == 250.0 and m.ch_names == CHANNELS for m in got)
        assert all(m.quality["flags"] == [] for m in got)
        wait_until(lambda: len(events_named(session, "epoch")) == 3)
        assert proc.poll() is None  # still running after bad markers
        invalid = events_named(session, "marker_invalid")
        assert len(invalid) == 2
        assert "not JSON" in invalid[0]["reason"]
        assert "'event'" in invalid[1]["reason"]
        stored = SessionStore(session).epochs()
        assert [e.trial_id for e in stored] == [10, 11, 12]
        # 0.4 s window at 250 Hz, both ends included
        assert stored[0].data.shape == (4, 101)
        for e, t in zip(stored, t_marks, strict=True):
            assert e.meta["t_marker_lsl"] == pytest.approx(t, abs=1e-3)
        # white noise of 10 µV band-passed to 0.5-40 Hz of a 250 Hz Nyquist band: ~4 µV
        expected = 10.0 * np.sqrt(39.5 / 250.0)
        assert float(np.std(stored[0].data)) == pytest.approx(expected, rel=0.4)
        latencies = [e["latency_ms"] for e in events_named(session, "epoch")]
        assert max(latencies) < 500
    finally:
        src.stop()


def test_flat_signal_is_flagged_not_dropped(processes, tmp_path, stream_name, free_port):
    src = NoiseSource(stream_name, CHANNELS, sfreq=250.0, amplitude_uv=0.0).start()
    try:
        session, proc = _acquire(processes, tmp_path, stream_name, free_port)
        wait_for_event(session, "acquisition_ready", proc=proc)
        src.marker({"event": "stimulus_onset", "trial": 1})
        event = wait_for_event(session, "epoch", proc=proc)
        assert event["bad"] is True
        assert event["flags"] == ["flat"]
        (stored,) = SessionStore(session).epochs()
        assert stored.meta["quality"]["channels"]["flat"] == CHANNELS
    finally:
        src.stop()


@pytest.mark.parametrize(
    ("protocol", "expected"),
    [
        ('[preprocessing]\nmontage = ["Cz", "O9"]\n', ["['O9']", *CHANNELS]),  # lists what it has
        ("[streams]\nsfreq = 500.0\n", ["250 Hz", "500 Hz"]),  # wrong sampling rate
    ],
)
def test_stream_that_does_not_fit_the_protocol_is_a_clear_error(
    tmp_path, stream_name, protocol, expected
):
    from conftest import run_eegs

    src = NoiseSource(stream_name, CHANNELS, sfreq=250.0).start()
    try:
        proto = tmp_path / "p.toml"
        proto.write_text(protocol)
        res = run_eegs(
            "acquire", "--protocol", str(proto), "--session", str(tmp_path / "s"),
            "--eeg", stream_name, "--markers", f"{stream_name}-markers", "--no-record",
        )  # fmt: skip
        assert res.returncode == 2
        for text in expected:
            assert text in res.stderr
    finally:
        src.stop()


def test_no_stream_is_a_clear_error(tmp_path, stream_name):
    from conftest import run_eegs

    proto = tmp_path / "p.toml"
    proto.write_text("[streams]\nconnect_timeout_s = 1.0\n")
    res = run_eegs(
        "acquire",
        "--protocol",
        str(proto),
        "--session",
        str(tmp_path / "s"),
        "--eeg",
        stream_name,
        "--no-record",
    )
    assert res.returncode == 2
    assert stream_name in res.stderr


def test_survives_the_eeg_stream_vanishing(processes, tmp_path, stream_name, free_port):
    markers = pylsl.StreamOutlet(
        pylsl.StreamInfo(f"{stream_name}-markers", "Markers", 1, 0, pylsl.cf_string, "m-src")
    )
    src = NoiseSource(stream_name, CHANNELS, markers=False).start()
    session, proc = _acquire(processes, tmp_path, stream_name, free_port)
    try:
        wait_for_event(session, "acquisition_ready", proc=proc)
        markers.push_sample([json.dumps({"event": "stimulus_onset", "trial": 1})])
        wait_for_event(session, "epoch", proc=proc)
        src.stop()  # the amplifier app quits
        wait_for_event(session, "eeg_gap", timeout=10, proc=proc)
        markers.push_sample([json.dumps({"event": "stimulus_onset", "trial": 2})])  # in the gap
        time.sleep(1.5)
        src = NoiseSource(stream_name, CHANNELS, markers=False).start()  # and comes back
        resumed = wait_for_event(session, "eeg_resumed", timeout=20, proc=proc)
        assert resumed["gap_s"] > 1.0
        time.sleep(0.5)
        markers.push_sample([json.dumps({"event": "stimulus_onset", "trial": 3})])
        wait_until(lambda: any(e["trial_id"] == 3 for e in events_named(session, "epoch")), 10)
        assert proc.poll() is None
        lost = {e["trial_id"] for e in events_named(session, "epoch_lost")}
        epoched = {e["trial_id"] for e in events_named(session, "epoch")}
        assert epoched == {1, 3}
        assert 2 in lost  # its window fell in the gap: logged, never cut from stale samples
    finally:
        src.stop()


def test_sigkill_leaves_every_written_epoch_readable(processes, tmp_path, stream_name, free_port):
    src = NoiseSource(stream_name, CHANNELS).start()
    try:
        session, proc = _acquire(processes, tmp_path, stream_name, free_port)
        wait_for_event(session, "acquisition_ready", proc=proc)
        for k in range(40):
            src.marker({"event": "stimulus_onset", "trial": k})
            time.sleep(0.02)
        wait_until(lambda: len(events_named(session, "epoch")) >= 5, 10)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        lines = (session / "events.jsonl").read_bytes().splitlines(keepends=True)
        assert all(line.endswith(b"\n") for line in lines)
        parsed = [json.loads(line) for line in lines]
        assert parsed == list(read_events(session / "events.jsonl"))
        logged = {e["trial_id"] for e in parsed if e["event"] == "epoch"}
        stored = SessionStore(session).epochs()  # every file loads
        assert logged <= {e.trial_id for e in stored}
        assert len(stored) >= 5
        # a kill mid-write may leave the one file it was writing, hidden, never a half
        # epoch under its final name (checked above)
        leftover = list((session / "epochs").glob("*.tmp"))
        assert len(leftover) <= 1
        assert all(p.name.startswith(".") for p in leftover)
    finally:
        src.stop()


def test_montage_picks_and_renames_channels(processes, tmp_path, stream_name, free_port):
    src = NoiseSource(stream_name, ["EEG 1", "EEG 2", "EEG 3"], sfreq=250.0).start()
    try:
        proto = tmp_path / "p.toml"
        proto.write_text(
            '[preprocessing]\nmontage = ["Oz", "EEG 1"]\nrename = { "EEG 2" = "Oz" }\n'
            "resample_hz = 125.0\n"
        )
        session, proc = _acquire(
            processes, tmp_path, stream_name, free_port, "--protocol", str(proto)
        )
        ready = wait_for_event(session, "acquisition_ready", proc=proc)
        assert ready["ch_names"] == ["Oz", "EEG 1"]
        assert ready["realtime"] is (os.geteuid() == 0)  # root may take SCHED_RR
        src.marker({"event": "stimulus_onset", "trial": 4})
        wait_for_event(session, "epoch", proc=proc)
        (stored,) = SessionStore(session).epochs()
        assert stored.meta["ch_names"] == ["Oz", "EEG 1"]
        assert stored.meta["sfreq"] == 125.0
        assert stored.data.shape == (2, 51)  # 0.4 s at 125 Hz, both ends
    finally:
        src.stop()
