"""Mode ``affective``: a decoder's probability of the target class.

ATM-S-FC or EEGNet (:mod:`models.decoders.classifiers`) on the 0-1 s window, loaded from
a file; a decoder fitted during the session on its calibration block is
:class:`workers.generation.personal_fit.CalibratedDecoderReward`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.rewards.base import EpochData, Reward, RewardError, RewardMode, epoch_window


class AffectiveReward(RewardMode):
    """Decoder probability of ``target_class`` on the 0-1 s window."""

    mode = "affective"

    def __init__(self, classifier, target_class: str, class_names: Sequence[str]):
        if target_class not in class_names:
            raise RewardError(f"target class {target_class!r} is not one of {list(class_names)}")
        self.classifier = classifier
        self.column = list(class_names).index(target_class)
        self.class_names = list(class_names)

    @classmethod
    def from_settings(cls, settings) -> AffectiveReward:
        """The decoder file ``settings.decoder`` names (one fitted in the session is not here)."""
        if not settings.decoder:
            raise RewardError(
                f"generation.reward.mode = '{cls.mode}' needs generation.reward.decoder "
                "(a classifier file from the calibration block)"
            )
        if settings.fitted_on_session:
            raise RewardError(
                f"generation.reward.decoder = {settings.decoder!r} is fitted by the generation "
                "worker during a session (workers/generation/personal_fit.py); it is not a "
                "file to load"
            )
        from models.decoders.classifiers import CLASS_NAMES, load_classifier

        return cls(load_classifier(settings.decoder), settings.target_class, CLASS_NAMES)

    def __call__(self, epoch: EpochData) -> Reward:
        """Reward of one epoch."""
        x = epoch_window(epoch, (0.0, 1.0))[None].astype(np.float32)
        proba = self.classifier.predict_proba(x)[0]
        return Reward(
            float(proba[self.column]),
            {
                "proba": {
                    n: round(float(p), 6) for n, p in zip(self.class_names, proba, strict=True)
                }
            },
        )
