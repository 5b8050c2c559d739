"""Small waiting helpers for tests that drive real processes."""

from __future__ import annotations

import re
import time
from pathlib import Path

from workers.session_store import read_events


def wait_for_event(session: Path, name: str, timeout: float = 30.0, proc=None) -> dict:
    """Block until ``events.jsonl`` of ``session`` has an event called ``name``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in read_events(session / "events.jsonl"):
            if event["event"] == name:
                return event
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"no '{name}' event in {session} after {timeout} s")


def events_named(session: Path, name: str) -> list[dict]:
    """Every event called ``name`` so far."""
    return [e for e in read_events(session / "events.jsonl") if e["event"] == name]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Block until ``predicate()`` is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def short_pilot_protocol(tmp_path: Path, **extra: str) -> Path:
    """The pilot protocol with short calibration (8) and validation (4) blocks.

    ``extra`` maps exact text of pilot.toml to its replacement.
    """
    repo = Path(__file__).resolve().parents[1]
    text = (repo / "experiment_protocols" / "pilot.toml").read_text()
    text = re.sub(
        r'kind = "calibration"\nn_trials = \d+', 'kind = "calibration"\nn_trials = 8', text
    )
    text = re.sub(r'kind = "validation"\nn_trials = \d+', 'kind = "validation"\nn_trials = 4', text)
    for old, new in extra.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "short.toml"
    path.write_text(text)
    return path
