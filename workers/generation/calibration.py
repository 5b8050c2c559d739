"""Calibration inside the worker: keep epochs and ratings until a session-fitted reward is fitted.

A reward fitted on the session itself
(:class:`~workers.generation.personal_fit.SessionFittedReward`: the calibrated decoder,
the personal estimator) cannot score until it is fitted. Until
then this gate keeps the calibration block's epochs and ratings for the fit, parks every
other epoch, fits in a thread of its own as soon as the block is in (or the calibration
is over without it), and then hands the parked epochs back to be scored. A fit that
fails is logged and the session goes on; its epochs stay unscored.

The calibration is over when the first epoch of a block after it in the protocol arrives,
or the first image request that lists trials (a round after round 0). A request for a
round 0 does not end it: the presentation asks for a block's round 0 ahead of time,
while the calibration block is still being shown and rated, and a fit then would miss
its last ratings. The forced fit is for a calibration block whose ratings never all
come (a replay has none): the loop must not wait for them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection

import numpy as np

from models.rewards.base import EpochData, RewardError
from workers.generation.ledger import Log
from workers.generation.personal_fit import SessionFittedReward
from workers.messages import EpochMessage, ErrorReply, RatingMessage, RewardReply

logger = logging.getLogger("eegs.generation")

#: Scores one epoch message again (the service's contained ``score_epoch``).
Rescore = Callable[[EpochMessage, list[np.ndarray]], object]


class CalibrationGate:
    """What happens to epochs and ratings while a session-fitted reward is not ready.

    Parameters
    ----------
    reward
        The session-fitted reward, or None (a fixed reward: the gate lets everything by).
    n_calibration
        Trials in the calibration block: the fit starts once that many are usable.
    rescore
        Scores a parked epoch once the fit is done.
    log
        ``log(event, **fields)`` into the session's events.
    later_blocks
        Labels of the protocol's blocks that come after the calibration block: an epoch of
        one of them says the calibration is over.
    """

    def __init__(
        self,
        reward: SessionFittedReward | None,
        n_calibration: int,
        rescore: Rescore,
        log: Log,
        later_blocks: Collection[str] = (),
    ) -> None:
        self.reward = reward
        self.n_calibration = n_calibration
        self._rescore = rescore
        self._log = log
        self.later_blocks = frozenset(later_blocks)
        self._lock = threading.Lock()  # parking vs the fit thread's hand-over
        self._parked: list[tuple[EpochMessage, list[np.ndarray]]] = []
        self._fit: threading.Thread | None = None
        self.loop_started = False  # the calibration is over (see the module's docstring)

    @property
    def n_parked(self) -> int:
        """Epochs waiting for the fit."""
        with self._lock:
            return len(self._parked)

    def intercept(
        self, msg: EpochMessage, arrays: list[np.ndarray], epoch: EpochData
    ) -> RewardReply | ErrorReply | None:
        """The reply for an epoch that must wait for the fit, or None: score it now.

        A calibration epoch is kept for the fit; any other waits for the fit.
        """
        if not self.loop_started and msg.marker.get("block") in self.later_blocks:
            self.loop_started = True  # another block has begun: the calibration is over
        cal = self.reward
        if cal is None or cal.ready:
            return None
        try:
            kept = cal.keep(epoch, msg.marker, msg.trial_id, msg.quality.get("flags") or [])
        except RewardError as err:
            return ErrorReply(error="reward_failed", detail=f"trial {msg.trial_id}: {err}")
        if kept is not None:
            reason = f"calibration epoch: kept to fit {cal.what}"
            self._log("calibration_epoch", trial_id=msg.trial_id, **kept)
            if cal.park_kept and not self._park(msg, arrays):  # rewarded after the fit
                return None  # fitted meanwhile (on fewer trials): rewarded now
            self._maybe_block_complete()
        else:
            reason = f"waiting for {cal.what}"
            if not self._park(msg, arrays):  # the decoder became ready meanwhile
                return None
            self._log("epoch_parked", trial_id=msg.trial_id, reason=reason)
        return RewardReply(trial_id=msg.trial_id, reward=0.0, used=False, reason=reason)

    def _park(self, msg: EpochMessage, arrays: list[np.ndarray]) -> bool:
        """Keep the epoch for after the fit; False if the fit is already done."""
        with self._lock:  # atomic with the fit thread's hand-over of parked epochs
            if self.reward is not None and self.reward.ready:
                return False
            self._parked.append((msg, arrays))
            return True

    def add_rating(self, msg: RatingMessage) -> ErrorReply | None:
        """Keep a self-report for the fit (other rewards ignore ratings); an error is logged."""
        cal = self.reward
        if cal is None or cal.ready:
            return None
        try:
            kept = cal.add_rating(msg)
        except RewardError as err:
            return ErrorReply(error="invalid", detail=str(err))
        if kept is not None:
            self._log("calibration_rating", trial_id=msg.trial_id, **kept)
            self._maybe_block_complete()
        return None

    def _maybe_block_complete(self) -> None:
        """Fit as soon as every trial of the calibration block is in."""
        cal = self.reward
        if cal is not None and cal.n_usable() >= self.n_calibration > 0 and cal.can_fit():
            self.start_fit()

    def maybe_fit(self) -> None:
        """Fit once the calibration is over, if not done yet (called on every loop pass)."""
        cal = self.reward
        if cal is None or self._fit is not None or not self.loop_started:
            return  # cheapest tests first
        if cal.can_fit():
            self.start_fit()

    def start_fit(self) -> None:
        """Fit in a thread of its own, so that round 0's images never wait for it."""
        if self._fit is not None or self.reward is None:
            return
        self._fit = threading.Thread(target=self.fit, name="decoder-fit", daemon=True)
        self._fit.start()

    def fitting(self) -> bool:
        """True while the fit runs (the next round waits a little for its rewards)."""
        return self._fit is not None and self._fit.is_alive()

    @property
    def settled(self) -> bool:
        """The reward is fitted (or was loaded fitted) and the epochs that waited are scored."""
        return self.reward is not None and self.reward.ready and not self.fitting()

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for a started fit (tests)."""
        if self._fit is not None:
            self._fit.join(timeout_s)

    def fit(self) -> None:
        """Fit now (in the calling thread), then score the parked epochs."""
        cal = self.reward
        if cal is None:
            return
        try:
            info = cal.fit()
        except Exception as err:  # the session goes on; its epochs stay unscored
            logger.exception("%s could not be fitted", cal.what)
            self._log("decoder_fit_failed", error=f"{type(err).__name__}: {err}")
            return
        self._log(cal.fit_event, **info)
        logger.info("%s fitted: %s", cal.what, info)
        with self._lock:
            parked, self._parked = self._parked, []
        for msg, arrays in parked:
            self._rescore(msg, arrays)
