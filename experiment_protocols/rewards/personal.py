"""Mode ``personal``: an estimator of the participant's own valence ratings.

Fitted by the worker on the session's calibration block and cross-validated inside it;
the asymmetry index (its ``fallback`` table) when the participant does not decode above
chance (models/rewards/personal.py, workers/generation/personal_fit.py).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from experiment_protocols.rewards.asymmetry import AsymmetryIndex, AsymmetrySettings
from experiment_protocols.rewards.base import RewardSettings


class PersonalSettings(RewardSettings):
    """The personal pseudo reward estimator and its fallback index."""

    mode: Literal["personal"] = "personal"
    folds: int = Field(5, ge=2, le=20, description="Cross-validation folds inside the block.")
    permutations: int = Field(
        200, ge=19, description="Rating shuffles of the permutation test (p >= 1/(this + 1))."
    )
    p_threshold: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="The participant decodes when the out-of-fold r > 0 and the "
        "permutation p is below this; otherwise the reward falls back to the index.",
    )
    min_trials: int = Field(12, ge=6, description="Fewer rated calibration trials fall back.")
    target_class: str = Field(
        "amusement", min_length=1, description="The pleasant class a high reward stands for."
    )
    fallback: AsymmetryIndex = Field(
        default_factory=AsymmetryIndex,
        description="The index that rewards a participant who does not decode.",
    )
    when_undecoded: Literal["index", "stop", "index_or_stop"] = Field(
        "index",
        description="A participant who does not decode: 'index' runs the closed loop on the "
        "fallback index; 'stop' ends each closed-loop block after the round in flight and "
        "says so (the index reads little of most people's single trials); 'index_or_stop' "
        "runs on the index where it alone follows the calibration ratings (permutation p "
        "below p_threshold) and stops where neither it nor the estimator does.",
    )

    description: ClassVar[str] = (
        "the participant's own pseudo reward estimator: their valence ratings predicted "
        "from the EEG, fitted on the calibration block (the asymmetry index when they do "
        "not decode)"
    )
    flat_keys: ClassVar[dict[str, str]] = {
        "personal_folds": "folds",
        "personal_permutations": "permutations",
        "personal_p_threshold": "p_threshold",
        "personal_min_trials": "min_trials",
        "asymmetry_pairs": "fallback.pairs",
        "asymmetry_band_hz": "fallback.band_hz",
        "asymmetry_window_s": "fallback.window_s",
        "asymmetry_alpha_scale": "fallback.alpha_scale",
        "target_class": "target_class",
    }

    @property
    def chases(self) -> str:
        """The pleasant class (``target_class``): the estimator predicts rated valence."""
        return self.target_class

    @property
    def fitted_on_session(self) -> bool:
        """Always: on the calibration block's epochs and ratings."""
        return True

    def without_ratings(self) -> AsymmetrySettings:
        """The fallback index, which rewards a participant who gives no ratings."""
        return AsymmetrySettings(**self.fallback.model_dump(), target_class=self.target_class)
