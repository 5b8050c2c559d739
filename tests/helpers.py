"""Small waiting helpers for tests that drive real processes."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pylsl

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


class MarkerReader:
    """Reads the presentation's marker stream in a thread, with LSL timestamps."""

    def __init__(self, name: str) -> None:
        found = pylsl.resolve_byprop("name", name, 1, 20)
        assert found, f"no marker stream {name}"
        self.inlet = pylsl.StreamInlet(found[0], max_buflen=60)
        self.inlet.open_stream(timeout=10)
        self.markers: list[tuple[dict, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            sample, ts = self.inlet.pull_sample(timeout=0.05)
            if sample is not None:
                self.markers.append((json.loads(sample[0]), ts))

    def events(self, name: str) -> list[dict]:
        return [m for m, _ in self.markers if m["event"] == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name)
            if len(found) >= count:
                return found[count - 1]
            time.sleep(0.02)
        raise AssertionError(f"no marker {name!r} #{count} within {timeout} s: {self.markers}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.inlet.close_stream()


def run_main(argv: list[str]) -> int:
    """``eegs ARGV`` in this process (no interpreter start), its signal handlers and
    logging put back as they were."""
    import logging
    import signal

    from app.cli import main

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    level = logging.getLogger().level
    try:
        return main(argv)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        logging.getLogger().setLevel(level)
