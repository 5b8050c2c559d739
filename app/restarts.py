"""What a child restarted within a session costs, and how nothing else is lost.

The supervisor (:mod:`app.supervisor`) starts a crashed worker or acquisition again.
Two things can still go missing while it is down, and both are handled here:

- epochs stored while the worker was down that the new worker never saw (it scores the
  unscored epochs it finds when it starts, but an epoch can land between that scan and
  its subscription): :func:`catch_up_rewards` sends each to the new worker;
- trials shown while the acquisition was down (their markers went nowhere) or whose
  epoch was lost in an EEG gap: :func:`account_lost_trials` flags each in
  ``events.jsonl`` (``trial_lost``, with the trial id and why), so that ``summary.json``
  lists them and the dataset, which takes only rewarded trials, leaves them out.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from experiment_protocols import Protocol
from workers.session_store import EVENTS_FILE, EventTail, SessionStore, read_events

logger = logging.getLogger("eegs.restarts")

#: Restarts of the worker and of the acquisition allowed within one session.
MAX_RESTARTS = 3
#: The event each restartable child logs once it serves again.
READY_EVENTS = {"acquire": "acquisition_ready", "worker": "generation_ready"}
#: Events that say the worker took an epoch (rewarded it, or kept it for a fit).
_TAKEN = ("reward", "calibration_epoch", "epoch_parked")


class RestartWatch:
    """Follows ``events.jsonl`` to tell which children the supervisor is restarting now.

    The presentation asks before it gives up on a round whose images are late: a worker
    being restarted is waited for, however long its start takes.
    """

    def __init__(self, session: Path) -> None:
        self._tail = EventTail(Path(session) / EVENTS_FILE)
        self._down: set[str] = set()
        self._back: dict[str, float] = {}  # child -> when its restart was seen done

    def restarting(self, name: str, grace_s: float = 0.0) -> bool:
        """Whether child ``name`` is being started again, or came back within ``grace_s``."""
        for e in self._tail.new():
            if e["event"] == "child_crashed" and e.get("restarting"):
                self._down.add(e.get("name"))
            elif e["event"] in ("child_crashed", "child_restarted"):
                if e.get("name") in self._down and e["event"] == "child_restarted":
                    self._back[e["name"]] = time.monotonic()
                self._down.discard(e.get("name"))
        return name in self._down or time.monotonic() - self._back.get(name, -1e9) < grace_s


def _scored_trials(events: list[dict[str, Any]]) -> set[int]:
    return {e["trial_id"] for e in events if e["event"] in _TAKEN and "trial_id" in e}


def catch_up_rewards(store: SessionStore, protocol: Protocol, settle_s: float = 1.0) -> int:
    """Send every stored epoch the worker has not taken to the worker; returns how many.

    The worker ignores a trial it rewarded already, so an epoch sent twice costs nothing.
    """
    import zmq

    from workers import transport
    from workers.messages import EpochMessage, encode

    time.sleep(settle_s)  # epochs published as the new worker subscribed land first
    events = list(store.events())
    taken = _scored_trials(events)
    fresh = time.time() - settle_s
    stored_at = {e["trial_id"]: e["t_wall"] for e in events if e["event"] == "epoch"}
    todo = [
        ep
        for ep in SessionStore(store.root).epochs()
        if ep.trial_id not in taken and stored_at.get(ep.trial_id, 0.0) < fresh
    ]
    if not todo:
        return 0
    net, g = protocol.network, protocol.generation
    sock = transport.connect(
        zmq.Context.instance(),
        zmq.DEALER,
        g.endpoint,
        secret_key=net.curve_secret_key,
        server_public_key=net.curve_public_key,
    )
    try:
        for ep in todo:
            msg = EpochMessage.of(
                ep.data,
                session=g.session or store.root.name,
                trial_id=ep.trial_id,
                marker=ep.meta.get("marker", {}),
                ch_names=ep.meta["ch_names"],
                sfreq=ep.meta["sfreq"],
                tmin=ep.meta["tmin"],
                quality=ep.meta.get("quality", {}),
            )
            sock.send_multipart([b"", *encode(msg, (ep.data,))])
        deadline = time.monotonic() + 10.0
        answered = 0
        while answered < len(todo) and sock.poll(max(0, int((deadline - time.monotonic()) * 1e3))):
            sock.recv_multipart()
            answered += 1
    finally:
        sock.close(0)
    store.log("rewards_caught_up", trials=[ep.trial_id for ep in todo], answered=answered)
    return len(todo)


def _windows(events: list[dict[str, Any]], name: str, margin_s: float) -> list[tuple[float, float]]:
    """Wall-clock spans in which child ``name`` was down (widened by ``margin_s``)."""
    out = []
    for e in events:
        if e["event"] == "child_restarted" and e.get("name") == name:
            start = float(e.get("t_crash_wall", e["t_wall"]))
            out.append((start - margin_s, float(e["t_wall"]) + margin_s))
    return out


def _inside(t: float, windows: list[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in windows)


def lost_trials(session: Path, protocol: Protocol) -> list[dict[str, Any]]:
    """Trials shown whose epoch or reward never came, each with why (not yet flagged ones)."""
    events = list(read_events(Path(session) / "events.jsonl"))
    flagged = {e["trial"] for e in events if e["event"] == "trial_lost"}
    stored = {ep.trial_id for ep in SessionStore(session).epochs()}
    epoch_lost = {e["trial_id"]: e.get("reason", "") for e in events if e["event"] == "epoch_lost"}
    taken = _scored_trials(events)
    t = protocol.presentation.timing
    margin = t.stimulus_s + t.iti_s + protocol.epochs.tmax + 2.0
    acq_down = _windows(events, "acquire", margin)
    worker_down = _windows(events, "worker", margin)
    epoch_t = {e["trial_id"]: e["t_wall"] for e in events if e["event"] == "epoch"}
    out = []
    for e in events:
        if e["event"] != "trial" or e["trial"] in flagged:
            continue
        tid = e["trial"]
        where = {"trial": tid, "block": e.get("block"), "round": e.get("round")}
        if tid not in stored:
            if tid in epoch_lost:
                reason = f"epoch lost: {epoch_lost[tid]}"
            elif _inside(e["t_wall"], acq_down):
                reason = "acquisition restarting: no epoch"
            else:
                reason = "no epoch recorded"
            out.append({**where, "reason": reason, "lost": "epoch"})
        elif tid not in taken and _inside(epoch_t.get(tid, e["t_wall"]), worker_down):
            out.append({**where, "reason": "worker restarting: no reward", "lost": "reward"})
        flagged.add(tid)
    return out


def flag_acquisition_downtime(
    store: SessionStore, protocol: Protocol, t_crash: float
) -> list[dict[str, Any]]:
    """Once a restarted acquisition serves: flag the trials shown while it was down.

    Called at once, so that the presentation can show their images again at the end of
    the block (``presentation.reshow_lost_trials``). It waits until a trial shown just
    before the acquisition came back would have had its epoch, then flags each trial
    of the downtime (widened by one trial and the epoch's window) that has none.
    """
    t = protocol.presentation.timing
    trial_s = t.fixation_s + t.stimulus_s + t.iti_s + 1.0
    t_ready = time.time()
    time.sleep(trial_s + protocol.epochs.tmax + 1.0)
    events = list(store.events())
    flagged = {e["trial"] for e in events if e["event"] == "trial_lost"}
    with_epoch = {e["trial_id"] for e in events if e["event"] == "epoch"}
    start, end = t_crash - (trial_s + protocol.epochs.tmax + 1.0), t_ready + trial_s
    lost = [
        {
            "trial": e["trial"],
            "block": e.get("block"),
            "round": e.get("round"),
            "reason": "acquisition restarting: no epoch",
            "lost": "epoch",
        }
        for e in events
        if e["event"] == "trial"
        and start <= e["t_wall"] <= end
        and e["trial"] not in with_epoch | flagged
    ]
    for record in lost:
        store.log("trial_lost", **record)
    return lost


def account_lost_trials(store: SessionStore, protocol: Protocol) -> list[dict[str, Any]]:
    """Flag each lost trial in ``events.jsonl`` (``trial_lost``); returns them."""
    lost = lost_trials(store.root, protocol)
    for record in lost:
        store.log("trial_lost", **record)
    if lost:
        logger.warning("%d trial(s) lost: flagged in events.jsonl", len(lost))
    return lost


def summarize_losses(events: list[dict[str, Any]]) -> dict[str, Any]:
    """``summary.json``'s account of restarts and lost trials."""
    lost = [e for e in events if e["event"] == "trial_lost"]
    return {
        "children_restarted": [
            {k: e.get(k) for k in ("name", "returncode", "attempt", "downtime_s")}
            for e in events
            if e["event"] == "child_restarted"
        ],
        "trials_lost": [
            {k: e.get(k) for k in ("trial", "block", "round", "reason", "lost")} for e in lost
        ],
        "n_trials_lost": len(lost),
    }
