"""A response box on LSL (``presentation.response_stream``): key presses for the rating screen.

Many labs' response boxes (and ``eegs brain-model``, the simulated participant) publish
their key presses as an LSL string stream. Each sample is one press: a JSON object with a
string (or integer) ``"key"``, e.g. ``{"key": "7"}`` (other fields are ignored), or a bare
key name such as ``7``. Its LSL timestamp is the time of the press.

A thread resolves the stream (it may appear after the presentation starts, or come back
after it was lost), opens a plain :class:`pylsl.StreamInlet` with clock correction, and
queues each press with its timestamp; the frame loop only drains the queue
(:meth:`ResponseBox.presses`), so the display never waits for the box.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pylsl

from experiment_protocols.bounded import InputRejected, parse_json

logger = logging.getLogger("eegs.presentation")

_RESOLVE_TIMEOUT_S = 0.5
_PULL_TIMEOUT_S = 0.05
#: A press is a key name or a small JSON object; anything longer is refused unread.
MAX_SAMPLE_CHARS = 4096
MAX_KEY_CHARS = 64


def parse_press(text: str) -> str:
    """The key name of one response-box sample; raises ValueError with the reason.

    JSON samples are read by the project's bounded parser (size, nesting, numbers), so no
    sample a box (or anyone on the network) sends can end the reading thread.
    """
    if len(text) > MAX_SAMPLE_CHARS:
        raise ValueError(f"a sample of {len(text)} characters is not a key press")
    text = text.strip()
    if not text:
        raise ValueError("empty sample")
    if text.startswith(("{", '"')):
        try:
            obj = parse_json(text, what="sample", max_bytes=MAX_SAMPLE_CHARS, non_finite="null")
        except InputRejected as err:
            raise ValueError(str(err)) from None
        key = obj.get("key") if isinstance(obj, dict) else obj
        if isinstance(key, bool) or not isinstance(key, str | int) or str(key).strip() == "":
            raise ValueError("a JSON sample needs a string or integer 'key'")
        text = str(key).strip()
    if len(text) > MAX_KEY_CHARS:
        raise ValueError(f"a key name of {len(text)} characters is not a key press")
    if not text.isprintable():  # control characters, lone surrogates
        raise ValueError("a key name holds control characters or invalid Unicode")
    return text


class ResponseBox:
    """Reads one LSL response stream in a thread; the frame loop drains the presses."""

    def __init__(self, name: str, log: Callable[..., None] | None = None) -> None:
        self.name = name
        self.log = log or (lambda *a, **k: None)
        self._presses: deque[tuple[str, float]] = deque(maxlen=256)
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.n_received = 0
        self.n_invalid = 0
        self._thread = threading.Thread(target=self._run, name="response-box", daemon=True)
        self._thread.start()

    # -- the reading thread ------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                inlet = self._open()
            except Exception:  # liblsl trouble: the box is looked for again, never given up
                logger.exception("response stream '%s' could not be opened", self.name)
                self._stop.wait(1.0)
                continue
            if inlet is None:
                continue
            try:
                self._read(inlet)
            except Exception as err:  # no sample may end the thread: every later rating
                logger.exception("response stream '%s' failed; reading it again", self.name)
                self.log("response_stream_lost", stream=self.name, reason=repr(err)[:200])
            finally:
                self.connected.clear()
                inlet.close_stream()

    def _open(self) -> pylsl.StreamInlet | None:
        found = pylsl.resolve_byprop("name", self.name, 1, _RESOLVE_TIMEOUT_S)
        if not found or self._stop.is_set():
            return None
        if found[0].channel_format() != pylsl.cf_string:
            logger.error("response stream '%s' carries numbers, not key names", self.name)
            self.log("response_stream_invalid", stream=self.name, reason="not a string stream")
            self._stop.wait(5.0)
            return None
        inlet = pylsl.StreamInlet(
            found[0], max_buflen=60, processing_flags=pylsl.proc_clocksync, recover=False
        )
        try:
            inlet.open_stream(timeout=2.0)
        except (TimeoutError, pylsl.LostError):
            return None
        self.connected.set()
        logger.info("reading response-box presses from '%s'", self.name)
        self.log("response_stream_connected", stream=self.name, host=found[0].hostname())
        return inlet

    def _read(self, inlet: pylsl.StreamInlet) -> None:
        while not self._stop.is_set():
            try:
                sample, t = inlet.pull_sample(timeout=_PULL_TIMEOUT_S)
            except pylsl.LostError:
                logger.warning("response stream '%s' lost; looking for it again", self.name)
                self.log("response_stream_lost", stream=self.name)
                return
            if sample is None:
                continue
            self.n_received += 1
            text = str(sample[0])
            try:
                key = parse_press(text)
            except ValueError as err:
                self.n_invalid += 1
                shown = text[:200].encode(errors="replace").decode()  # no lone surrogate
                logger.warning("ignoring response sample %r: %s", shown, err)
                self.log("response_invalid", text=shown, reason=str(err)[:300])
                continue
            self._presses.append((key, float(t)))

    # -- the frame loop ----------------------------------------------------------------
    def next_press(self) -> tuple[str, float] | None:
        """The oldest press not taken yet: (key name, LSL time of the press), or None."""
        try:
            return self._presses.popleft()
        except IndexError:
            return None

    def presses(self) -> list[tuple[str, float]]:
        """Every press received and not taken yet, oldest first."""
        out = []
        while (press := self.next_press()) is not None:
            out.append(press)
        return out

    def discard(self, where: dict[str, Any] | None = None) -> None:
        """Drop presses made outside the rating screen (each one logged)."""
        for key, t in self.presses():
            self.log("response_ignored", key=key, t_lsl=t, reason="no question", **(where or {}))

    def close(self) -> None:
        """Stop the thread (it closes the inlet)."""
        self._stop.set()
        self._thread.join(2.0)
