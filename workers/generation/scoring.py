"""Scoring: one epoch -> the protocol's reward -> credited to the image its marker names.

No sockets and no threads here: the service hands in decoded epochs and sends back what
:meth:`EpochScorer.score` returns, so the scorer can be run on given epochs alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from experiment_protocols import Protocol
from experiment_protocols.generation import Generation
from models.rewards.base import EpochData, RewardFunction, as_reward
from workers.generation.ledger import Log, RewardLedger
from workers.messages import EpochMessage, ErrorReply, RewardReply
from workers.session_store import SessionStore


def image_roots(protocol: Protocol, store: SessionStore | None) -> list[Path]:
    """The folders a marker may name an image in: the session's, the pool's, the blocks'.

    The worker opens no other file a marker names (a marker is input from the network).
    """
    base = Path(protocol.source).resolve().parent if protocol.source else Path.cwd()
    roots = [store.root] if store is not None else []
    if protocol.generation.pool.folder:
        roots.append(Path(protocol.generation.pool.folder))
    roots += [base / b.folder for b in protocol.presentation.blocks if b.folder]
    return [r.expanduser().resolve() for r in roots]


def _inside(path: str, roots: list[Path]) -> bool:
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return any(resolved.is_relative_to(root) for root in roots)


def epoch_of(msg: EpochMessage, arrays: list[np.ndarray]) -> EpochData | None:
    """The message's epoch, or None if it is not one (n_channels, n_times) array."""
    if len(arrays) != 1 or arrays[0].ndim != 2 or arrays[0].shape[0] != len(msg.ch_names):
        return None
    return EpochData(arrays[0].astype(np.float64), msg.ch_names, msg.sfreq, msg.tmin)


class EpochScorer:
    """The reward function on one epoch, and the credit of its reward in the ledger.

    Parameters
    ----------
    settings
        The protocol's ``generation`` section (image key, flagged epochs).
    reward_fn
        Epoch -> reward in [0, 1] (see :mod:`models.rewards.base`).
    ledger
        Where a used reward is credited.
    roots
        The only folders a marker's image path may lie in (see :func:`image_roots`).
    log
        ``log(event, **fields)`` into the session's events.
    """

    def __init__(
        self,
        settings: Generation,
        reward_fn: RewardFunction,
        ledger: RewardLedger,
        roots: list[Path],
        log: Log,
    ) -> None:
        self.g = settings
        self.reward_fn = reward_fn
        self.ledger = ledger
        self.roots = roots
        self._log = log

    def image_for(self, marker: dict[str, Any]) -> tuple[str | None, str | None]:
        """(image id this worker issued, or None; path of the image file, or None)."""
        ref = marker.get(self.g.image_key)
        explicit = marker.get("image_id")
        if isinstance(explicit, str) and explicit in self.ledger.issued:
            return explicit, None
        if not isinstance(ref, str) or not ref:
            return None, None
        stem = Path(ref).stem
        if stem in self.ledger.issued:
            return stem, None
        return None, ref

    def score(
        self, msg: EpochMessage, epoch: EpochData, t0: float | None = None
    ) -> RewardReply | ErrorReply:
        """Reward one epoch and credit it to the image its marker names.

        ``t0`` (``time.perf_counter()``) is when the message arrived, for ``compute_ms``.
        """
        t0 = time.perf_counter() if t0 is None else t0
        try:
            reward = as_reward(self.reward_fn(epoch))
        except (ValueError, RuntimeError) as err:
            return ErrorReply(error="reward_failed", detail=f"trial {msg.trial_id}: {err}")
        value = float(reward.value)
        if not np.isfinite(value):  # never logged or credited: the session's JSON is strict
            self._log("reward_failed", trial_id=msg.trial_id, reason=f"the reward is {value}")
            return ErrorReply(
                error="reward_failed", detail=f"trial {msg.trial_id}: the reward is {value}"
            )
        compute_ms = (time.perf_counter() - t0) * 1e3
        image_id, path = self.image_for(msg.marker)
        used, reason = False, ""
        flags = msg.quality.get("flags") or []
        if msg.trial_id in self.ledger.trial_rewards:
            reason = "this trial was rewarded already"
        elif flags and not self.g.use_flagged_epochs:
            reason = f"epoch flagged {flags}"
        elif image_id is not None:
            embedding = self.ledger.issued[image_id].embedding
            self.ledger.credit(msg.trial_id, image_id, embedding, None, value)
            used = True
        elif path is not None and not _inside(path, self.roots):
            reason = "the marker names an image outside the session, pool and block folders"
        elif path is not None and Path(path).is_file():
            image_id = Path(path).stem
            self.ledger.credit(msg.trial_id, image_id, None, path, value)
            used = True
        else:
            reason = "the marker names no image this worker knows or can read"
        self._log(
            "reward",
            trial_id=msg.trial_id,
            image_id=image_id,
            image=msg.marker.get(self.g.image_key),
            reward=value,
            used=used,
            reason=reason,
            details=reward.details,
            compute_ms=round(compute_ms, 3),
        )
        return RewardReply(
            trial_id=msg.trial_id,
            reward=value,
            image_id=image_id,
            used=used,
            reason=reason,
            details=reward.details,
            compute_ms=round(compute_ms, 3),
        )
