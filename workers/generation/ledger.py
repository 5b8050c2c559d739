"""The worker's books: images it issued, rewards it credited, rewards the GP has yet to see.

Scoring credits rewards here from the serving thread and the decoder-fit thread; the
round thread drains them into the generator. Kept apart from the service so that a
restarted worker (:mod:`workers.generation.restore`) and the tests can fill and read the
books without sockets or threads.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from models.heuristic import HeuristicGenerator

logger = logging.getLogger("eegs.generation")

Log = Callable[..., None]
Embed = Callable[[Sequence[Image.Image]], np.ndarray]


@dataclass
class Issued:
    """An image this worker sent: what the GP needs when its reward arrives."""

    embedding: np.ndarray
    round: int
    provenance: dict[str, Any]


class RewardLedger:
    """Issued images, credited rewards and the queue of rewards not yet observed.

    Parameters
    ----------
    log
        ``log(event, **fields)`` into the session's events (a no-op without a session).
    """

    def __init__(self, log: Log) -> None:
        self.issued: dict[str, Issued] = {}
        self.trial_rewards: dict[int, float] = {}  # trials whose reward was used
        self.trials_scored: set[int] = set()  # every trial whose epoch arrived
        self.n_observations = 0
        self.best_reward: float | None = None
        self._pending: deque[tuple[str, np.ndarray | None, str | None, float]] = deque()
        self._lock = threading.Lock()
        self._log = log

    def credit(
        self,
        trial_id: int,
        image_id: str,
        embedding: np.ndarray | None,
        path: str | None,
        value: float,
    ) -> None:
        """Count a trial's reward and queue it for the generator (embedded later if None)."""
        with self._lock:
            self._pending.append((image_id, embedding, path, value))
        self.trial_rewards[trial_id] = value
        self.n_observations += 1
        self.best_reward = value if self.best_reward is None else max(self.best_reward, value)

    def n_pending(self) -> int:
        """Rewards credited but not yet observed by the generator."""
        with self._lock:
            return len(self._pending)

    def drain(self, generator: HeuristicGenerator, embed: Embed) -> None:
        """Move new rewards into the generator (background thread only).

        If embedding fails (a CUDA out-of-memory, say), the rewards go back to the queue
        for the next round instead of being lost, and the error is raised.
        """
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
        to_embed = [(i, p, r) for i, e, p, r in items if e is None]
        embedded = []
        if to_embed:
            images, keep = [], []
            for image_id, path, r in to_embed:
                try:
                    with Image.open(path) as im:
                        images.append(im.convert("RGB"))
                    keep.append((image_id, r))
                except (OSError, Image.DecompressionBombError) as err:
                    logger.warning("cannot read %s for its embedding: %s", path, err)
                    self._log("reward_unusable", image=str(path), reason=str(err))
            if images:
                try:
                    embedded = list(zip(keep, embed(images), strict=True))
                except Exception as err:  # noqa: BLE001 - keep the rewards for the next round
                    with self._lock:
                        self._pending.extendleft(reversed(items))
                    self._log("embedding_failed", n_rewards=len(items), error=repr(err))
                    raise
        for (image_id, r), e in embedded:
            generator.observe(image_id, e, r)
        for image_id, e, _, r in items:
            if e is not None:
                generator.observe(image_id, e, r)
