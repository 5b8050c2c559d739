"""The session store: append-only events, atomic files, readable after any crash."""

from __future__ import annotations

import json

import numpy as np

from workers.session_store import (
    EventTail,
    SessionStore,
    next_recording_file,
    read_events,
    recording_files,
)


def test_events_and_epochs_round_trip(tmp_path):
    store = SessionStore(tmp_path / "s").open(role="test", subject="P01")
    store.log("hello", n=1)
    x = np.random.default_rng(0).normal(size=(3, 7)).astype(np.float32)
    store.write_epoch(5, x, {"trial_id": 5, "marker": {"event": "e"}})
    store.close("completed")
    info = json.loads((tmp_path / "s" / "session.json").read_text())
    assert info["status"] == "completed"
    assert info["subject"] == "P01"
    assert info["processes"]["test"]["pid"] > 0
    events = [e["event"] for e in store.events()]
    assert events == ["process_start", "hello", "process_end"]
    (ep,) = store.epochs()
    assert ep.trial_id == 5
    np.testing.assert_array_equal(ep.data, x)
    assert not list((tmp_path / "s").rglob("*.tmp"))


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"event": "a"}\n{"event": "b"}\n{"event": "c", "x": [1, 2')
    assert [e["event"] for e in read_events(path)] == ["a", "b"]


def test_reopening_keeps_earlier_info(tmp_path):
    SessionStore(tmp_path).open(role="one", subject="P02").close()
    store = SessionStore(tmp_path).open(role="two")
    info = store.read_info()
    assert info["subject"] == "P02"
    assert set(info["processes"]) == {"one", "two"}
    store.close()


def test_event_tail_reads_each_complete_line_once(tmp_path):
    store = SessionStore(tmp_path / "s").open(role="test")
    tail = EventTail(tmp_path / "s" / "events.jsonl")
    assert [e["event"] for e in tail.new()] == ["process_start"]
    store.log("a", k=1)
    with open(tmp_path / "s" / "events.jsonl", "ab") as fh:
        fh.write(b'{"event": "torn"')  # a line still being written
    assert [e["event"] for e in tail.new()] == ["a"]
    with open(tmp_path / "s" / "events.jsonl", "ab") as fh:
        fh.write(b"}\n")
    assert [e["event"] for e in tail.new()] == ["torn"]
    assert tail.new() == []
    store.close()


def test_resumed_sessions_record_into_new_parts(tmp_path):
    assert next_recording_file(tmp_path) == "recording.xdf"
    (tmp_path / "recording.xdf").write_bytes(b"x")
    assert next_recording_file(tmp_path) == "recording-part2.xdf"
    (tmp_path / "recording-part2.xdf").write_bytes(b"x")
    for k in range(3, 11):
        (tmp_path / f"recording-part{k}.xdf").write_bytes(b"x")
    names = [p.name for p in recording_files(tmp_path)]
    assert names[:3] == ["recording.xdf", "recording-part2.xdf", "recording-part3.xdf"]
    assert names[-1] == "recording-part10.xdf"  # numeric, not text, order
    assert next_recording_file(tmp_path) == "recording-part11.xdf"


def test_a_non_finite_number_in_an_event_is_written_as_null_not_a_crash(tmp_path):
    store = SessionStore(tmp_path / "s").open(role="test")
    store.log(
        "gp_refit", noise=float("nan"), outputscale=np.float64("inf"),
        best_by_round=[0.5, float("-inf")], timing=np.array([1.0, np.nan]), n_points=3,
    )  # fmt: skip
    store.log("after", n=1)
    store.close()
    lines = (tmp_path / "s" / "events.jsonl").read_text().splitlines()
    for line in lines:  # strict JSON: no NaN or Infinity tokens
        json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    refit, after = (e for e in store.events() if e["event"] in ("gp_refit", "after"))
    assert refit["noise"] is None
    assert refit["outputscale"] is None
    assert refit["best_by_round"] == [0.5, None]
    assert refit["timing"] == [1.0, None]
    assert refit["n_points"] == 3
    assert refit["non_finite"] is True
    assert after["n"] == 1
    assert "non_finite" not in after


def test_events_logged_from_many_threads_are_each_written_once(tmp_path):
    """A worker logs from its loop and its fitting thread at once: no line lost or doubled."""
    import threading

    store = SessionStore(tmp_path / "s").open(role="test")

    def burst(k: int) -> None:
        for i in range(300):
            store.log("burst", thread=k, i=i)

    threads = [threading.Thread(target=burst, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    store.close()
    got = [(e["thread"], e["i"]) for e in store.events() if e["event"] == "burst"]
    assert sorted(got) == [(k, i) for k in range(4) for i in range(300)]
