"""The session store: append-only events, atomic files, readable after any crash."""

from __future__ import annotations

import json

import numpy as np

from workers.session_store import SessionStore, read_events


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
