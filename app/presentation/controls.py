"""Experimenter control: pause, resume and abort keys, a stop signal, a status line.

Keys are read once per frame (PsychoPy's event queue; no blocking). A SIGTERM or
Ctrl-C (``app.shutdown.STOP``) counts as an abort, so a supervisor that stops the
presentation gets the same clean end as the abort key. The experimenter's dashboard
sends the same three commands to a ZeroMQ PULL socket (:class:`RemoteControl`), read
in the same place without blocking, so a command from the page is a key press.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

import zmq

from experiment_protocols.bounded import InputRejected, parse_json
from experiment_protocols.presentation import Keys
from workers import transport

logger = logging.getLogger("eegs.present")

#: What the dashboard may ask for (``{"command": NAME}`` on the control socket).
REMOTE_COMMANDS = ("pause", "resume", "abort")
MAX_CONTROL_BYTES = 1024


class Aborted(Exception):
    """The experimenter (key) or the supervisor (signal) ended the session."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RemoteControl:
    """The dashboard's pause, resume and abort: a loopback PULL socket drained per frame.

    The presentation binds (it outlives any dashboard, which connects and may restart);
    :meth:`commands` never blocks, and anything but a known command is logged and dropped.
    """

    def __init__(self, endpoint: str, on_event: Callable[..., Any] | None = None) -> None:
        self.endpoint = endpoint
        self.on_event = on_event
        self.sock, _ = transport.bind(zmq.Context.instance(), zmq.PULL, endpoint)
        self.sock.setsockopt(zmq.RCVHWM, 16)

    def commands(self) -> list[str]:
        """The commands received since the last call."""
        out = []
        while True:
            try:
                raw = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return out
            try:
                obj = parse_json(raw, what="control message", max_bytes=MAX_CONTROL_BYTES)
            except InputRejected:
                obj = None
            command = obj.get("command") if isinstance(obj, dict) else None
            if command in REMOTE_COMMANDS:
                out.append(command)
                if self.on_event is not None:
                    self.on_event("remote_control", command=command)
            else:
                logger.warning("control message ignored: %r", raw[:80])

    def close(self) -> None:
        """Close the socket."""
        self.sock.close(0)


class Controls:
    """Latches the experimenter's keys between the moments the runner looks at them."""

    def __init__(
        self,
        keys: Keys,
        stop: threading.Event | None = None,
        remote: RemoteControl | None = None,
    ) -> None:
        from psychopy import event

        self._event = event
        self.keys = keys
        self.stop = stop
        self.remote = remote
        self._key_list = [keys.pause, keys.resume, keys.abort, keys.proceed]
        self.extra: list[str] = []
        self.pause_requested = False
        self.resume_pressed = False
        self.proceed_pressed = False
        self.pressed: list[str] = []

    def poll(self) -> None:
        """Read the keys pressed since the last frame; raise :class:`Aborted` on abort."""
        self.pressed = self._event.getKeys(keyList=self._key_list + self.extra)
        for key in self.pressed:
            if key == self.keys.abort:
                raise Aborted("abort key")
            if key == self.keys.pause:
                self.pause_requested = True
            elif key == self.keys.resume:
                self.resume_pressed = True
            elif key == self.keys.proceed:
                self.proceed_pressed = True
        if self.remote is not None:
            for command in self.remote.commands():
                if command == "abort":
                    raise Aborted("abort from the dashboard")
                if command == "pause":
                    self.pause_requested = True
                else:
                    self.resume_pressed = True
        if self.stop is not None and self.stop.is_set():
            raise Aborted("stop signal")

    def clear(self) -> None:
        """Forget latched keys (at the start of a screen that waits for one)."""
        self._event.clearEvents("keyboard")
        self.resume_pressed = self.proceed_pressed = False
        self.pressed = []


class StatusLine:
    """One status line for the experimenter on the console (rewritten in place on a TTY)."""

    def __init__(self, keys: Keys, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.hint = f"[{keys.pause}] pause  [{keys.resume}] resume  [{keys.abort}] abort"

    def show(self, text: str) -> None:
        """Replace the status line."""
        line = f"present | {text} | {self.hint}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        """End the line so that later output starts on its own."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
