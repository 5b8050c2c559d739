"""Mode ``semantic``: cosine of the epoch's ATM-S embedding with a target EEG embedding."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from experiment_protocols.rewards.base import RewardSettings


class SemanticSettings(RewardSettings):
    """(1 + cos(ATM-S embedding, target)) / 2 (models/rewards/semantic.py)."""

    mode: Literal["semantic"] = "semantic"
    encoder: str = Field("", description="ATM-S checkpoint; '' = a random encoder.")
    target_embedding: str = Field("", description=".npy or .safetensors target embedding.")

    description: ClassVar[str] = "cosine of the ATM-S embedding with a target EEG embedding"

    flat_keys: ClassVar[dict[str, str]] = {
        "encoder": "encoder",
        "target_embedding": "target_embedding",
    }

    @property
    def chases(self) -> str:
        """The target embedding."""
        return "target"

    @classmethod
    def without_files(cls) -> None:
        """None: it needs the lab's target embedding."""
        return None

    @model_validator(mode="after")
    def _check(self) -> SemanticSettings:
        if not self.target_embedding:
            raise ValueError("mode 'semantic' needs target_embedding (a .npy/.safetensors file)")
        return self
