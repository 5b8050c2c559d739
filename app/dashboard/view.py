"""What the page shows, built from the sources: one snapshot per new page, then deltas.

:class:`View` folds each new line of ``events.jsonl`` (and each marker, EEG chunk, worker
status) into the page's state and returns, every tick, only what changed, as one JSON
object. Every event or marker it forwards carries ``t_event``, the wall-clock time it
happened (the writer's ``t_wall``, a marker's flip time), so the page can measure how
long the update took to reach it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from app.dashboard.quality import Thresholds, channel_quality
from app.dashboard.sources import EEGSource, MarkerSource, WorkerStatus
from workers.session_store import EVENTS_FILE, EventTail, read_sidecar

#: The timing histograms: name -> (event, how to read the value).
HISTOGRAMS = (
    "epoch_latency_ms",
    "round_ready_ms",
    "dropped_frames",
    "marker_push_delay_ms",
    "timing_check_correction_ms",
)
#: Events that raise an alert on the page.
ALERT_EVENTS = ("child_crashed", "eeg_gap", "epoch_lost", "rewards_missing", "markers_unheard")
#: Samples per second drawn of each traced channel.
TRACE_HZ = 50.0
#: Seconds of EEG behind the quality table; it is computed this often. A channel is
#: judged only once the stream has filled one whole window (a partial window at the
#: start is no evidence of a flat channel).
QUALITY_WINDOW_S = 4.0
QUALITY_EVERY_S = 1.0
#: No EEG sample for this long, once samples came: the stream stalled.
STALL_S = 1.0
#: A stream found but silent this long since: no sample ever came (an amplifier whose
#: app opened the stream but is not acquiring).
FIRST_SAMPLE_GRACE_S = 5.0


#: Points of each traced channel the page keeps (5 s at ``TRACE_HZ``): a merged delta
#: carries no more.
TRACE_POINTS = 250
#: Delta fields that accumulate (the page appends them); every other field is a state
#: the newest value replaces.
_APPENDED = ("rewards", "markers", "t_events")


def merge_deltas(older: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
    """One delta that brings a page from before ``older`` to after ``newer``.

    What a page has not been sent yet is merged rather than queued (the server's
    backpressure, docs/architecture.md section 12): states (the loop, images, quality,
    alerts, the worker, ...) take the newest value, events (rewards, markers, histogram
    values, the events' times) are all kept, and the EEG trace keeps only the points the
    page would still show; a trace of channels the stream no longer has is dropped.
    """
    out = {**older, **newer}
    for key in _APPENDED:
        if key in older and key in newer:
            out[key] = older[key] + newer[key]
    if "hist" in older and "hist" in newer:
        hist = {k: list(v) for k, v in older["hist"].items()}
        for k, v in newer["hist"].items():
            hist[k] = hist.get(k, []) + v
        out["hist"] = hist
    if "eeg" in older and "eeg" in newer and "channels" not in newer:
        a, b = older["eeg"], newer["eeg"]
        out["eeg"] = {
            "t": (a["t"] + b["t"])[-TRACE_POINTS:],
            "y": [(ya + yb)[-TRACE_POINTS:] for ya, yb in zip(a["y"], b["y"], strict=True)],
        }
    elif "channels" in newer and "eeg" not in newer:
        out.pop("eeg", None)
    return out


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class View:
    """The dashboard's state, fed by the session's event log and (live) its streams."""

    def __init__(
        self,
        session: Path,
        *,
        eeg: EEGSource | None = None,
        markers: MarkerSource | None = None,
        worker: WorkerStatus | None = None,
        thresholds: Thresholds | None = None,
        channels: list[str] | None = None,
        live: bool = True,
        quality_window_s: float = QUALITY_WINDOW_S,
        first_sample_grace_s: float = FIRST_SAMPLE_GRACE_S,
    ) -> None:
        self.session = Path(session).resolve()
        self.quality_window_s = quality_window_s
        self.first_sample_grace_s = first_sample_grace_s
        self.eeg, self.markers, self.worker = eeg, markers, worker
        self.th = thresholds or Thresholds()
        self.want_channels = channels
        self.live = live
        self.tail = EventTail(self.session / EVENTS_FILE)
        self.where: dict[str, Any] = {}
        self.state = "waiting"
        self.counts: dict[str, int] = {"trials": 0, "epochs": 0, "flagged": 0, "rewards": 0}
        self.trial_where: dict[int, dict[str, Any]] = {}
        self.rewards: list[dict[str, Any]] = []
        self.best: dict[str, float] = {}  # "block/round" -> best reward
        self.images: list[dict[str, Any]] = []
        self.images_key = ""
        self.calibration: dict[str, Any] | None = None
        self.gp: dict[str, Any] = {}
        self.hist: dict[str, list[float]] = {k: [] for k in HISTOGRAMS}
        self.alerts: deque[dict[str, Any]] = deque(maxlen=50)
        self.marker_log: deque[dict[str, Any]] = deque(maxlen=30)
        self.flag_counts: dict[str, int] = {}
        self.quality: list[dict[str, Any]] = []
        self.bad: set[str] = set()
        self.stalled = False
        self.trace: list[int] = []
        self._eeg_count = 0
        self._marker_count = 0
        self._next_quality = 0.0
        self._quality_rows: list[dict[str, Any]] | None = None
        self._changed: set[str] = set()

    # -- events ------------------------------------------------------------------------
    def _image_info(self, path: str) -> dict[str, Any]:
        """Kind and parents from a generated image's JSON sidecar."""
        p = Path(path)
        info: dict[str, Any] = {"image_id": p.stem, "path": str(p), "kind": "folder"}
        sidecar = p.with_suffix(".json")
        if p.is_relative_to(self.session) and sidecar.is_file():
            prov = (read_sidecar(sidecar) or {}).get("provenance")
            prov = prov if isinstance(prov, dict) else {}
            info["kind"] = prov.get("kind", "?")
            info["parents"] = prov.get("parents", [])
        return info

    def _alert(self, level: str, text: str, t: float | None = None) -> dict[str, Any]:
        alert = {"level": level, "text": text, "t_event": t or time.time()}
        self.alerts.append(alert)
        self._changed.add("alerts")
        return alert

    def _hist(self, name: str, value: Any) -> None:
        v = _finite(value)
        if v is not None:
            self.hist[name].append(round(v, 3))
            self._changed.add("hist")

    def fold(self, e: dict[str, Any]) -> None:
        """Take one event of ``events.jsonl`` into the state."""
        kind = e.get("event")
        t = _finite(e.get("t_wall")) or time.time()
        if kind == "marker_sent":
            m = e.get("marker") or {}
            self._hist("marker_push_delay_ms", e.get("push_delay_ms"))
            ev = m.get("event")
            if ev == "stimulus_onset" and isinstance(m.get("trial"), int):
                where = {"block": m.get("block"), "round": m.get("round", 0), "trial": m["trial"]}
                self.trial_where[m["trial"]] = where
                self.where = where
                self.state = "running"
                self._changed.add("loop")
                if isinstance(m.get("image"), str):
                    key = f"{where['block']}/{where['round']}"
                    if key != self.images_key:
                        self.images_key, self.images = key, []
                    self.images.append({**self._image_info(m["image"]), "trial": m["trial"]})
                    self._changed.add("images")
            elif ev in ("pause", "resume", "abort"):
                self.state = {"pause": "paused", "resume": "running", "abort": "aborted"}[ev]
                self._changed.add("loop")
        elif kind == "trial":
            self.counts["trials"] += 1
            self._hist("dropped_frames", e.get("dropped_frames"))
            self._changed.add("loop")
        elif kind == "epoch":
            self.counts["epochs"] += 1
            self.counts["flagged"] += bool(e.get("bad"))
            self._hist("epoch_latency_ms", e.get("latency_ms"))
            for chans in (e.get("flag_channels") or {}).values():
                for ch in set(chans):
                    self.flag_counts[ch] = self.flag_counts.get(ch, 0) + 1
            self._changed.add("loop")
        elif kind == "reward":
            reward = _finite(e.get("reward"))
            trial = e.get("trial_id")
            if reward is None or not isinstance(trial, int):
                return
            where = self.trial_where.get(trial, {})
            item = {
                "trial": trial,
                "reward": round(reward, 4),
                "block": where.get("block"),
                "round": where.get("round"),
                "image_id": e.get("image_id"),
                "t_event": t,
            }
            self.rewards.append(item)
            self.counts["rewards"] += 1
            if where:
                key = f"{where['block']}/{where['round']}"
                self.best[key] = max(self.best.get(key, -math.inf), reward)
            for img in self.images:
                if img.get("trial") == trial:
                    img["reward"] = item["reward"]
                    self._changed.add("images")
            self._changed.add("rewards")
        elif kind == "image_batch":
            timing = e.get("timing_ms") or {}
            self._hist("round_ready_ms", timing.get("round_ms"))
            self.gp.update(
                round=e.get("round"),
                n_images=e.get("n_images"),
                converged=e.get("converged", False),
                best_by_round=e.get("best_by_round"),
                deadline_missed=e.get("deadline_missed"),
            )
            self._changed.add("gp")
        elif kind == "gp_refit":
            self.gp.update(refit_ms=e.get("ms"), iters=e.get("iters"))
            for k in ("n_points", "signal_to_noise", "lengthscale_median", "noise", "outputscale"):
                self.gp[k] = e.get(k)
            self._changed.add("gp")
        elif kind in ("personal_estimator", "decoder_fitted"):
            keep = ("decodes", "cv_r", "cv_r_ci95", "p_value", "fallback", "reason", "reward")
            self.calibration = {"event": kind, **{k: e[k] for k in keep if k in e}}
            for k in ("cv_score", "cv_accuracy", "cv_f1", "score"):
                if k in e:
                    self.calibration[k] = e[k]
            self._changed.add("calibration")
        elif kind == "timing_check":
            self._hist("timing_check_correction_ms", e.get("correction_ms"))
        elif kind == "disk_full":  # the session stops: the experimenter must act
            self._alert(
                "error",
                f"disk full ({e.get('process', '?')}): the session stops, its files closed; "
                f"continue it on another disk: eegs resume {self.session} --to DIR",
                t,
            )
        elif kind == "disk_low":
            free = _finite(e.get("free_bytes")) or 0.0
            self._alert("warning", f"disk low: {free / 2**20:.0f} MiB free for the session "
                        f"(it stops at {e.get('min_free_mb')} MiB)", t)  # fmt: skip
        elif kind == "rewards_missing" and e.get("waited_s") == 0:
            pass  # a protocol that starts each round at once (reward_wait_s = 0) by design
        elif kind in ALERT_EVENTS:
            detail = e.get("name") or e.get("trials") or e.get("trial_id") or ""
            self._alert("error" if kind == "child_crashed" else "warning", f"{kind} {detail}", t)
        elif kind == "session_status":
            self.state = str(e.get("status"))
            self._changed.add("loop")

    # -- live sources ------------------------------------------------------------------
    def _trace_channels(self) -> list[int]:
        eeg = self.eeg
        if eeg is None or not eeg.ch_names:
            return []
        if not self.trace:
            names = eeg.ch_names
            wanted = self.want_channels or [names[i] for i in eeg.eeg_idx[:8]]
            self.trace = [names.index(c) for c in wanted if c in names]
        return self.trace

    def _eeg_delta(self) -> dict[str, Any] | None:
        eeg = self.eeg
        chans = self._trace_channels()
        if eeg is None or not chans:
            return None
        x, t, self._eeg_count = eeg.since(self._eeg_count, max_n=int(eeg.sfreq * 5))
        if not len(t):
            return None
        step = max(1, round(eeg.sfreq / TRACE_HZ))
        phase = (self._eeg_count - len(t)) % step  # decimate on one grid across chunks
        x, t = x[chans, (-phase) % step :: step], t[(-phase) % step :: step]
        mean = eeg.window(2.0)[chans].mean(axis=1, keepdims=True)
        return {"t": np.round(t, 3).tolist(), "y": np.round(x - mean, 1).tolist()}

    def compute_quality(self) -> list[dict[str, Any]] | None:
        """The quality rows of the last seconds (thread-safe: run off the event loop).

        None until the stream has filled one whole window.
        """
        eeg = self.eeg
        if eeg is None or not eeg.eeg_idx:
            return None
        n = int(self.quality_window_s * eeg.sfreq)
        if eeg.count < n:
            return None
        x = eeg.window(self.quality_window_s)[eeg.eeg_idx]
        return channel_quality(x, eeg.sfreq, self.th)

    def quality_ready(self, rows: list[dict[str, Any]] | None) -> None:
        """Take rows of :meth:`compute_quality` into the page's table (next tick)."""
        self._quality_rows = rows

    def _quality(self) -> None:
        eeg = self.eeg
        rows, self._quality_rows = self._quality_rows, None
        if eeg is None or rows is None or len(rows) != len(eeg.eeg_idx):
            return
        epochs = max(self.counts["epochs"], 1)
        out, bad = [], set()
        for i, row in zip(eeg.eeg_idx, rows, strict=True):
            name = eeg.ch_names[i]
            row = {"channel": name, **row}
            row["flagged_epochs"] = round(self.flag_counts.get(name, 0) / epochs, 3)
            out.append(row)
            if row["flags"]:
                bad.add(name)
        newly = sorted(bad - self.bad)
        if newly:
            named = ", ".join(
                f"{r['channel']} ({'/'.join(r['flags'])})" for r in out if r["channel"] in newly
            )
            self._alert("warning", f"channel went bad: {named}"[:300])
        cleared = [r["channel"] for r in out if r["channel"] in self.bad - bad]
        if cleared:
            self._alert("info", f"channel good again: {', '.join(cleared)}"[:300])
        self.bad, self.quality = bad, out
        self._changed.add("quality")

    def _stall(self) -> None:
        """Alert when the stream stalls, and when it flows again.

        Stalled: the inlet pulled for ``STALL_S`` without a sample once samples came, or
        for the grace period (``FIRST_SAMPLE_GRACE_S``) after it found the stream without
        any. Measured between the inlet's own pulls: a dashboard that got no CPU for a
        while has not seen a stall.
        """
        eeg = self.eeg
        if eeg is None or not eeg.connected:
            return
        if eeg.count:
            stalled = eeg.silent_s() > STALL_S
            why = f"no sample for {STALL_S:g} s"
        else:
            stalled = eeg.silent_s() > self.first_sample_grace_s
            why = f"no sample since it was found {self.first_sample_grace_s:g} s ago"
        if stalled and not self.stalled:
            self._alert("error", f"EEG stream '{eeg.name}' stalled: {why}")
        elif self.stalled and not stalled:
            self._alert("info", f"EEG stream '{eeg.name}' flowing again")
        self.stalled = stalled

    def _marker_delta(self) -> list[dict[str, Any]]:
        if self.markers is None:
            return []
        items, self._marker_count = self.markers.since(self._marker_count)
        out = []
        for it in items:
            m = it["marker"]
            brief = {k: m[k] for k in ("event", "trial", "block", "round") if k in m}
            out.append({"t_event": round(it["t_event"], 4), **brief})
        self.marker_log.extend(out)
        return out

    def _worker(self) -> dict[str, Any] | None:
        w = self.worker
        if w is None:
            return None
        return {
            "endpoint": w.endpoint,
            "reachable": w.reachable,
            "last_reply": w.last_reply,
            "reconnects": w.n_reconnects,
            "status": w.status,
        }

    # -- what the page gets ------------------------------------------------------------
    def _part(self, name: str) -> Any:
        if name == "loop":
            return {"where": self.where, "state": self.state, "counts": self.counts}
        if name == "rewards":
            return {"best": self.best}
        if name == "images":
            return {"key": self.images_key, "items": self.images}
        if name == "calibration":
            return self.calibration
        if name == "gp":
            return self.gp
        if name == "quality":
            return self.quality
        if name == "alerts":
            return list(self.alerts)
        raise KeyError(name)

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, for a page that just connected."""
        out = {name: self._part(name) for name in ("loop", "images", "calibration", "gp")}
        out.update(
            kind="snapshot",
            live=self.live,
            t_server=time.time(),
            session=self.session.name,
            rewards=self.rewards,
            best=self.best,
            hist=self.hist,
            quality=self.quality,
            alerts=list(self.alerts),
            markers=list(self.marker_log),
            worker=self._worker(),
            channels=[self.eeg.ch_names[i] for i in self._trace_channels()] if self.eeg else [],
            sfreq=self.eeg.sfreq if self.eeg else None,
        )
        return out

    def tick(self) -> dict[str, Any] | None:
        """What changed since the last tick (None: nothing)."""
        n_rewards, n_hist = len(self.rewards), {k: len(v) for k, v in self.hist.items()}
        t_events = []
        for e in self.tail.new():
            self.fold(e)
            if isinstance(e.get("t_wall"), float):
                t_events.append(e["t_wall"])
        out: dict[str, Any] = {"kind": "delta"}
        now = time.time()
        if not self.trace and self._trace_channels():  # the stream just appeared
            out["channels"] = [self.eeg.ch_names[i] for i in self.trace]
            out["sfreq"] = self.eeg.sfreq
        eeg = self._eeg_delta()
        if eeg is not None:
            out["eeg"] = eeg
        markers = self._marker_delta()
        if markers:
            out["markers"] = markers
            t_events += [m["t_event"] for m in markers]
        if self._quality_rows is not None:
            self._quality()
        if self.live and now >= self._next_quality:
            self._next_quality = now + QUALITY_EVERY_S
            self._stall()
            out["worker"] = self._worker()
        if len(self.rewards) > n_rewards:
            out["rewards"] = self.rewards[n_rewards:]
            out["best"] = self.best
        if "hist" in self._changed:
            out["hist"] = {k: v[n_hist[k] :] for k, v in self.hist.items() if len(v) > n_hist[k]}
        for name in ("loop", "images", "calibration", "gp", "quality", "alerts"):
            if name in self._changed:
                out[name] = self._part(name)
        self._changed.clear()
        if len(out) == 1:
            return None
        if t_events:
            out["t_events"] = t_events
        if eeg is not None:
            out["t_eeg_sample"] = now - (self._lsl_now() - eeg["t"][-1])
        out["t_server"] = now
        return out

    @staticmethod
    def _lsl_now() -> float:
        import pylsl

        return pylsl.local_clock()
