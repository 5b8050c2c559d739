"""Mode ``asymmetry``: the frontal alpha asymmetry index (training-free, tracks valence)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from experiment_protocols._section import Section
from experiment_protocols.rewards.base import RewardSettings


class AsymmetryIndex(Section):
    """Logistic of ln P(right) - ln P(left) in the alpha band (models/rewards/asymmetry.py).

    Also the personal reward's fallback (its ``fallback`` table).
    """

    pairs: list[tuple[str, str]] = Field(
        default_factory=lambda: [
            ("F3", "F4"),
            ("F5", "F6"),
            ("F7", "F8"),
            ("FC3", "FC4"),
            ("AF3", "AF4"),
        ],
        min_length=1,
        description="(left, right) homologous frontal channels; pairs absent from the epoch "
        "are skipped.",
    )
    band_hz: tuple[float, float] = Field((8.0, 13.0), description="The alpha band (Hz).")
    window_s: tuple[float, float] = Field((0.3, 1.0), description="Window of the power (s).")
    alpha_scale: float = Field(
        0.5, gt=0, description="Single-trial spread of ln P(right) - ln P(left) (alpha)."
    )

    @model_validator(mode="after")
    def _check(self) -> AsymmetryIndex:
        lo, hi = self.window_s
        if not lo < hi:
            raise ValueError(f"window_s {[lo, hi]} needs start < end")
        lo, hi = self.band_hz
        if not 0 < lo < hi:
            raise ValueError(f"band_hz {[lo, hi]} needs 0 < low < high")
        return self


class AsymmetrySettings(AsymmetryIndex, RewardSettings):
    """The asymmetry index as the loop's reward: higher is more pleasant."""

    mode: Literal["asymmetry"] = "asymmetry"
    target_class: str = Field(
        "amusement", min_length=1, description="The pleasant class a high reward stands for."
    )

    description: ClassVar[str] = "frontal alpha asymmetry index (valence, no training)"
    training_free: ClassVar[bool] = True
    flat_keys: ClassVar[dict[str, str]] = {
        "asymmetry_pairs": "pairs",
        "asymmetry_band_hz": "band_hz",
        "asymmetry_window_s": "window_s",
        "asymmetry_alpha_scale": "alpha_scale",
        "target_class": "target_class",
    }

    @property
    def chases(self) -> str:
        """The pleasant class (``target_class``)."""
        return self.target_class
