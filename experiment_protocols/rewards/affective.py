"""Mode ``affective``: a decoder's probability of ``target_class``.

The decoder is a classifier file (``eegs evaluate --save-decoder``), or, with
``decoder = "calibration"``, fitted by the worker on the session's labelled calibration
epochs (workers/generation/personal_fit.py).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from experiment_protocols.rewards.base import RewardSettings

#: The value of ``decoder`` that asks the worker to fit one on the calibration block.
CALIBRATION = "calibration"


class AffectiveSettings(RewardSettings):
    """The decoder's probability of ``target_class`` (models/rewards/affective.py)."""

    mode: Literal["affective"] = "affective"
    decoder: str = Field(
        "",
        description="A classifier file, or 'calibration' (the worker fits "
        "decoder.classifier on the session's calibration epochs when the loop starts).",
    )
    target_class: str = Field(
        "amusement", min_length=1, description="The class whose probability is the reward."
    )

    description: ClassVar[str] = (
        "a decoder's probability of target_class (a file, or fitted on the calibration "
        "block's labels)"
    )

    flat_keys: ClassVar[dict[str, str]] = {"decoder": "decoder", "target_class": "target_class"}

    @property
    def chases(self) -> str:
        """``target_class``."""
        return self.target_class

    @property
    def fitted_on_session(self) -> bool:
        """With ``decoder = "calibration"``."""
        return self.decoder == CALIBRATION

    @classmethod
    def without_files(cls) -> AffectiveSettings:
        """The decoder fitted on the calibration block's labels."""
        return cls(decoder=CALIBRATION)
