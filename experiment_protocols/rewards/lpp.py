"""Mode ``lpp``: the late positive potential index (training-free, tracks arousal)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from experiment_protocols.rewards.base import RewardSettings


class LppSettings(RewardSettings):
    """Logistic of the mean LPP amplitude over centro-parietal channels (models/rewards/lpp.py)."""

    mode: Literal["lpp"] = "lpp"
    window_s: tuple[float, float] = Field((0.4, 0.8), description="LPP window (s).")
    channels: list[str] = Field(
        default_factory=lambda: ["Pz", "P1", "P2", "P3", "P4", "POz", "CPz"],
        description="Channels averaged for the LPP; those absent from the epoch are skipped.",
    )
    scale_uv: float = Field(5.0, gt=0, description="LPP amplitude that maps to 0.73.")

    description: ClassVar[str] = "late-positive-potential index (arousal, no training)"
    training_free: ClassVar[bool] = True
    is_default: ClassVar[bool] = True
    flat_keys: ClassVar[dict[str, str]] = {
        "lpp_window_s": "window_s",
        "lpp_channels": "channels",
        "lpp_scale_uv": "scale_uv",
    }

    @property
    def chases(self) -> str:
        """Arousal: the LPP grows with it."""
        return "arousal"

    @property
    def oracle(self) -> str:
        """Arousal."""
        return "arousal"

    @model_validator(mode="after")
    def _check(self) -> LppSettings:
        lo, hi = self.window_s
        if not lo < hi:
            raise ValueError(f"window_s {[lo, hi]} needs start < end")
        return self
