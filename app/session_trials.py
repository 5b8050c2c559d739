"""A session's shown images, each joined with its reward, epoch flag and provenance.

The one view of the trials that the dataset, ``summary.json`` (:mod:`app.session_outputs`)
and ``report.html`` (:mod:`app.report`) all read; kept apart so that neither of those
two has to import the other's module to get it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.session_store import read_events, read_sidecar


@dataclass
class Trial:
    """One shown image with everything the session learnt about it."""

    trial: int
    block: str
    round: int
    image: Path
    label: str | None
    t_wall: float
    reward: float | None = None
    reward_details: dict[str, Any] = field(default_factory=dict)
    bad: bool | None = None
    rating: Any = None
    dropped_frames: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)

    def rated(self, scale: str) -> float | None:
        """The participant's rating of this trial on ``scale`` (None: not rated)."""
        value = self.rating.get(scale) if isinstance(self.rating, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if np.isfinite(value) else None


def collect_trials(session: Path) -> tuple[list[Trial], list[dict[str, Any]]]:
    """Join presentation trials, rewards, epoch flags and image sidecars; also the events."""
    events = list(read_events(session / "events.jsonl"))
    trials: dict[int, Trial] = {}
    rewards, flags = {}, {}
    for e in events:
        if e["event"] == "trial" and not e.get("stand_in"):
            trials[e["trial"]] = Trial(
                e["trial"],
                e["block"],
                e["round"],
                Path(e["image"]),
                e.get("label"),
                e["t_wall"],
                rating=e.get("rating"),
                dropped_frames=e.get("dropped_frames", 0),
            )
        elif e["event"] == "reward":
            rewards[e["trial_id"]] = e
        elif e["event"] == "epoch":
            flags[e["trial_id"]] = e["bad"]
    for t in trials.values():
        if t.trial in rewards:
            t.reward = rewards[t.trial]["reward"]
            t.reward_details = rewards[t.trial].get("details", {})
        t.bad = flags.get(t.trial)
        sidecar = t.image.with_suffix(".json")
        if sidecar.exists():
            provenance = (read_sidecar(sidecar) or {}).get("provenance")
            t.provenance = provenance if isinstance(provenance, dict) else {}
    return sorted(trials.values(), key=lambda t: t.trial), events


def by_image(trials: list[Trial]) -> dict[Path, list[Trial]]:
    """Rewarded trials grouped by the image they showed, in the order first shown.

    An image shown several times (a block's ``presentations``, a reshown trial) is one
    image of the dataset and of the figures, with the mean of its trials' rewards.
    """
    out: dict[Path, list[Trial]] = {}
    for t in trials:
        if t.reward is not None:
            out.setdefault(t.image, []).append(t)
    return out


def mean_reward(trials: list[Trial]) -> float:
    """The mean reward of one image's trials (:func:`by_image`)."""
    return float(np.mean([t.reward for t in trials]))
