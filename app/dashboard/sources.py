"""What the dashboard reads: the EEG and marker streams, the event log, the worker's status.

Each LSL source is its own inlet in a thread of its own (the session's inlets are never
shared), the event log is tailed like ``eegs pilot``'s progress line does, and the worker
is asked for its :class:`~workers.messages.StatusReply` on a DEALER socket that is made
again whenever a reply does not come, so a restarted worker is found again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import pylsl
import zmq

from workers import transport
from workers.messages import (
    MessageError,
    StatusReply,
    StatusRequest,
    decode,
    encode,
    parse_marker,
)

logger = logging.getLogger("eegs.dashboard")

_UNIT_TO_UV = {
    "microvolts": 1.0,
    "microvolt": 1.0,
    "uv": 1.0,
    "µv": 1.0,
    "millivolts": 1e3,
    "mv": 1e3,
    "volts": 1e6,
    "v": 1e6,
}


def _channels(info: pylsl.StreamInfo) -> tuple[list[str], list[str], np.ndarray]:
    """Names, types and the scale to µV of each channel of a stream (from its header)."""
    n = info.channel_count()
    names, types, scale = [f"ch{i + 1}" for i in range(n)], ["eeg"] * n, np.ones(n)
    ch = info.desc().child("channels").child("channel")
    i = 0
    while not ch.empty() and i < n:
        names[i] = ch.child_value("label") or names[i]
        types[i] = (ch.child_value("type") or "eeg").lower()
        scale[i] = _UNIT_TO_UV.get((ch.child_value("unit") or "microvolts").lower(), 1.0)
        ch = ch.next_sibling()
        i += 1
    return names, types, scale


def _inlet(name: str, max_buflen: int) -> pylsl.StreamInlet | None:
    """An inlet on the stream called ``name``, or None if it is not there within 1 s."""
    found = pylsl.resolve_byprop("name", name, 1, 1.0)
    return pylsl.StreamInlet(found[0], max_buflen=max_buflen) if found else None


class EEGSource:
    """The last ``seconds`` of the EEG stream in a ring buffer (µV), filled by a thread."""

    def __init__(self, name: str, seconds: float = 10.0) -> None:
        self.name = name
        self.seconds = seconds
        self.sfreq = 0.0
        self.ch_names: list[str] = []
        self.eeg_idx: list[int] = []
        self.count = 0  # samples received in all
        self.last_wall = 0.0  # time.time() of the last chunk
        self.connected_wall = 0.0  # time.time() when the stream was found
        # time.time() of the inlet's last pull, samples or not: how long the stream has
        # been silent is measured between pulls, so that a dashboard starved of CPU
        # (niceness +10 on a busy machine) does not take its own delay for a stall
        self.last_pull_wall = 0.0
        self.connected = False
        self._lock = threading.Lock()
        self._buf = np.zeros((0, 0), dtype=np.float32)
        self._times = np.zeros(0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eeg-inlet", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        inlet = None
        while not self._stop.is_set():
            if inlet is None:
                inlet = _inlet(self.name, int(self.seconds) + 1)
                if inlet is None:
                    continue
                info = inlet.info(timeout=5.0)
                names, types, scale = _channels(info)
                with self._lock:
                    self.sfreq = info.nominal_srate() or 250.0
                    self.ch_names = names
                    eeg = [i for i, t in enumerate(types) if t == "eeg"]
                    self.eeg_idx = [i for i in eeg if "photo" not in names[i].lower()]
                    n = int(self.seconds * self.sfreq)
                    self._buf = np.zeros((len(names), n), dtype=np.float32)
                    self._times = np.zeros(n)
                    self._scale = scale.astype(np.float32)[:, None]
                self.connected_wall = self.last_pull_wall = time.time()
                self.connected = True
            # arrays straight from liblsl: no Python list per sample (a 64-channel, 1 kHz
            # stream would cost this process a good part of a core)
            chunk, stamps = inlet.pull_chunk(timeout=0.05, max_samples=1024, as_numpy=True)
            if not len(stamps):
                self.last_pull_wall = time.time()
                continue
            x = chunk.T.astype(np.float32) * self._scale
            t = np.asarray(stamps)
            with self._lock:
                n = self._buf.shape[1]
                x, t = x[:, -n:], t[-n:]
                idx = (self.count + np.arange(x.shape[1])) % n  # a circular buffer
                self._buf[:, idx] = x
                self._times[idx] = t
                self.last_wall = time.time()  # before count and last_pull_wall: silent_s()
                self.count += len(stamps)
                self.last_pull_wall = self.last_wall

    def silent_s(self) -> float:
        """Seconds the inlet has pulled without a sample, as of its last pull.

        Since the last sample; before the first, since it found the stream. Read without
        the lock, in the reverse of the order the inlet writes them.
        """
        pulled = self.last_pull_wall
        return pulled - (self.last_wall if self.count else self.connected_wall)

    def _last(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        idx = (self.count - k + np.arange(k)) % self._buf.shape[1]
        return self._buf[:, idx], self._times[idx]

    def since(self, count: int, max_n: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """Samples (all channels) and their LSL times received after sample ``count``."""
        with self._lock:
            n = min(self.count - count, self._buf.shape[1])
            if max_n is not None:
                n = min(n, max_n)
            if n <= 0:
                return np.zeros((len(self.ch_names), 0)), np.zeros(0), self.count
            x, t = self._last(n)
            return x, t, self.count

    def window(self, seconds: float) -> np.ndarray:
        """The last ``seconds`` of every channel (fewer at the start)."""
        with self._lock:
            n = min(int(seconds * self.sfreq), self.count, self._buf.shape[1])
            return self._last(n)[0]

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()


class MarkerSource:
    """Every marker of the session's marker stream, with its time on this host's wall clock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.connected = False
        # the view takes what came in at every tick (10 a second); a few seconds' worth
        # is kept, not a session's (5,000 held markers were 3 MB of a 67 MB process)
        self.items: deque[dict[str, Any]] = deque(maxlen=256)
        self.count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="marker-inlet", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        inlet = None
        while not self._stop.is_set():
            if inlet is None:
                inlet = _inlet(self.name, 60)
                if inlet is None:
                    continue
                self.connected = True
            sample, ts = inlet.pull_sample(timeout=0.05)
            if sample is None:
                continue
            try:  # the limits every marker reader applies (a 5000-deep marker is no crash)
                marker = parse_marker(sample[0])
            except MessageError:
                marker = {"event": str(sample[0])[:80].encode(errors="replace").decode()}
            now = time.time()
            # the marker's flip time on the wall clock: LSL and wall clocks of one host
            t_event = now - (pylsl.local_clock() - ts)
            with self._lock:
                self.items.append({"t_lsl": ts, "t_event": t_event, "marker": marker})
                self.count += 1

    def since(self, count: int) -> tuple[list[dict[str, Any]], int]:
        """Markers received after the first ``count``."""
        with self._lock:
            n = min(self.count - count, len(self.items))
            return (list(self.items)[len(self.items) - n :] if n > 0 else []), self.count

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()


class WorkerStatus:
    """Asks the generation worker for its status once a second, in a thread."""

    def __init__(
        self,
        endpoint: str,
        *,
        secret_key: str | None = None,
        server_public_key: str | None = None,
        period_s: float = 1.0,
        timeout_s: float = 1.0,
    ) -> None:
        self.endpoint = endpoint
        self.keys = {"secret_key": secret_key, "server_public_key": server_public_key}
        self.period_s, self.timeout_s = period_s, timeout_s
        self.status: dict[str, Any] | None = None
        self.reachable = False
        self.last_reply = 0.0
        self.n_reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-status", daemon=True)
        self._thread.start()

    def _socket(self) -> zmq.Socket:
        return transport.connect(zmq.Context.instance(), zmq.DEALER, self.endpoint, **self.keys)

    def _run(self) -> None:
        sock = self._socket()
        while not self._stop.is_set():
            t0 = time.monotonic()
            sock.send_multipart([b"", *encode(StatusRequest())])
            if sock.poll(int(self.timeout_s * 1000)):
                frames = sock.recv_multipart()
                try:
                    msg, _ = decode(frames[1:] if frames and frames[0] == b"" else frames)
                except MessageError:
                    msg = None
                if isinstance(msg, StatusReply):
                    self.status = msg.model_dump(exclude={"type", "v"})
                    self.reachable = True
                    self.last_reply = time.time()
            else:  # a worker that went away: a fresh socket finds its successor
                self.reachable = False
                sock.close(0)
                sock = self._socket()
                self.n_reconnects += 1
            self._stop.wait(max(0.0, self.period_s - (time.monotonic() - t0)))
        sock.close(0)

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
