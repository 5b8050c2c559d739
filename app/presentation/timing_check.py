"""``eegs timing-check``: photodiode flashes against their markers, and the correction.

The photodiode patch flashes N times; each flash onset is a ``stimulus_onset`` marker
(no image, ``"block": "timing_check"``) stamped with its flip time, exactly as in a
session. The photodiode's channel is read from the EEG stream (the amplifier's
auxiliary input, or the brain model's simulated ``Photodiode`` channel), each light
onset is found in it, and the marker-to-light offsets give the display's lag (mean,
the correction to add to marker times) and its jitter (SD, which no correction
removes). The result is written into the session (``events.jsonl`` and
``session.json``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pylsl

from app.presentation.controls import Aborted, Controls
from app.presentation.display import FramePacer, check_refresh, lsl_offset, open_window
from app.presentation.eventlog import EventWriter
from app.presentation.frames import FrameRecorder
from app.presentation.markers import MarkerStream
from app.presentation.photodiode import PhotodiodePatch, light_offsets, offset_report
from experiment_protocols import Protocol
from workers.errors import InputError
from workers.session_store import SessionStore

logger = logging.getLogger("eegs.timing_check")


class TimingCheckError(InputError):
    """No usable photodiode signal: missing stream or channel, or no light seen."""


@dataclass
class TimingCheckConfig:
    """What one ``eegs timing-check`` run does."""

    protocol: Protocol
    session_dir: Path
    windowed: bool = False
    stop: threading.Event | None = None


class ChannelRecorder:
    """Pulls one channel of an LSL stream, with LSL timestamps, in a thread."""

    def __init__(self, stream: str, channel: str, timeout: float) -> None:
        found = pylsl.resolve_byprop("name", stream, 1, timeout)
        if not found:
            raise TimingCheckError(
                f"no LSL stream named '{stream}' within {timeout} s (streams.eeg): start "
                "the amplifier's LSL app, or use --source brain-model"
            )
        flags = pylsl.proc_clocksync | pylsl.proc_dejitter | pylsl.proc_monotonize
        self.inlet = pylsl.StreamInlet(found[0], max_buflen=60, processing_flags=flags)
        info = self.inlet.info(timeout)
        labels = _channel_labels(info)
        if channel not in labels:
            self.inlet.close_stream()
            raise TimingCheckError(
                f"stream '{stream}' has no channel '{channel}' "
                f"(presentation.photodiode.channel); it has {labels}"
            )
        self.index = labels.index(channel)
        self.sfreq = info.nominal_srate()
        self.inlet.open_stream(timeout)
        self._times: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="photodiode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            data, stamps = self.inlet.pull_chunk(timeout=0.05, max_samples=4096)
            if stamps:
                self._times.append(np.asarray(stamps))
                self._values.append(np.asarray(data)[:, self.index])

    def latest(self) -> float:
        """Timestamp of the newest sample so far (-inf before the first)."""
        return float(self._times[-1][-1]) if self._times else -np.inf

    def stop(self) -> tuple[np.ndarray, np.ndarray]:
        """Stop and return (times, values)."""
        self._stop.set()
        self._thread.join(2)
        self.inlet.close_stream()
        if not self._times:
            return np.empty(0), np.empty(0)
        return np.concatenate(self._times), np.concatenate(self._values)


def _channel_labels(info: pylsl.StreamInfo) -> list[str]:
    labels = []
    ch = info.desc().child("channels").child("channel")
    while not ch.empty():
        labels.append(ch.child_value("label"))
        ch = ch.next_sibling()
    return labels if len(labels) == info.channel_count() else []


def run(config: TimingCheckConfig) -> dict[str, Any]:
    """Show the flashes, measure the offsets, write them into the session."""
    protocol = config.protocol
    pres = protocol.presentation
    tc = pres.timing_check
    store = SessionStore(config.session_dir).open(role="timing-check", protocol=protocol)
    log = EventWriter(store)
    status = "failed"
    win = recorder = None
    report: dict[str, Any] = {}
    try:
        recorder = ChannelRecorder(
            protocol.streams.eeg, pres.photodiode.channel, protocol.streams.connect_timeout_s
        )
        win = open_window(pres, windowed=config.windowed)
        if pres.screen.check_refresh and not pres.screen.pace_frames:
            # as the runner does: a display without the protocol's vsync gives a timing
            # correction that is wrong, and it would be written into the session
            check_refresh(win, pres)
        offset = lsl_offset()
        markers = MarkerStream(win, protocol.streams.markers, log, offset)
        if not markers.wait_for_consumers(protocol.streams.connect_timeout_s):
            logger.warning("nobody reads the marker stream '%s'", protocol.streams.markers)
        flashes = _flash(win, protocol, markers, Controls(pres.keys, config.stop))
        deadline = flashes[-1] + tc.max_lag_ms / 1e3 + 0.5
        while recorder.latest() < deadline and pylsl.local_clock() < deadline + 5.0:
            time.sleep(0.02)
        times, values = recorder.stop()
        recorder = None
        try:
            offsets = light_offsets(
                times,
                values,
                np.asarray(flashes),
                max_lag_s=tc.max_lag_ms / 1e3,
                search_before_s=tc.interval_s / 2,
            )
            report = offset_report(offsets, len(flashes))
        except ValueError as err:
            raise TimingCheckError(
                f"photodiode channel '{pres.photodiode.channel}': {err}"
            ) from None
        report["sfreq"] = recorder_sfreq = _sfreq(times)
        log(
            "timing_check",
            **report,
            offsets_ms=np.round(offsets * 1e3, 3),
            stream=protocol.streams.eeg,
            channel=pres.photodiode.channel,
        )
        logger.info("timing check at %.0f Hz: %s", recorder_sfreq, report)
        store.update_info(timing_check=report)
        status = "completed"
    except Aborted:
        status = "aborted"
    finally:
        if recorder is not None:
            recorder.stop()
        try:
            log.close()
        finally:
            store.close(status)
            if win is not None:
                win.close()
    return {"status": status, **report}


def _sfreq(times: np.ndarray) -> float:
    return float(1.0 / np.median(np.diff(times))) if times.size > 1 else float("nan")


def _flash(win: Any, protocol: Protocol, markers: MarkerStream, controls: Controls) -> list[float]:
    """Show the flashes; returns each flash's onset flip time (LSL clock)."""
    pres = protocol.presentation
    tc = pres.timing_check
    hz = pres.screen.refresh_hz
    patch = PhotodiodePatch(win, pres.photodiode.model_copy(update={"enabled": True}))
    pacer = FramePacer(hz) if pres.screen.pace_frames else None
    frames = FrameRecorder(hz, pres.screen.dropped_frame_margin_ms)
    n_on = max(1, round(tc.flash_s * hz))
    n_off = max(1, round(tc.interval_s * hz) - n_on)
    offset = markers.offset

    def flip(on: bool) -> float:
        patch.draw(on)
        if pacer is not None:
            pacer.wait()
        t = win.flip() + offset
        if pacer is not None:
            pacer.flipped()
        i = frames.add(t, 0.0, 0.0, "flash")
        markers.flipped(i, t)
        controls.poll()
        return t

    for _ in range(n_off):  # dark before the first flash
        flip(False)
    onsets = []
    for k in range(tc.n_flashes):
        markers.on_next_flip("stimulus_onset", block="timing_check", flash=k)
        onsets.append(flip(True))
        for _ in range(n_on - 1):
            flip(True)
        markers.on_next_flip("stimulus_offset", block="timing_check", flash=k)
        for _ in range(n_off):
            flip(False)
    return onsets
