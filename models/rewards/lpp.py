"""Mode ``lpp``: a training-free arousal index, the late positive potential.

The mean LPP (Schupp et al. 2000; Hajcak et al. 2010: larger for emotionally arousing
pictures) over centro-parietal channels, squashed by a logistic. It needs no
calibration, so the worker runs out of the box; it tracks arousal, not valence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.rewards.base import EpochData, Reward, RewardError, RewardMode, epoch_window


class LppReward(RewardMode):
    """Logistic of the mean LPP amplitude (µV) over the named channels."""

    mode = "lpp"

    def __init__(self, window_s: tuple[float, float], channels: Sequence[str], scale_uv: float):
        self.window_s = tuple(window_s)
        self.channels = list(channels)
        self.scale_uv = scale_uv

    @classmethod
    def from_settings(cls, settings) -> LppReward:
        """The index ``generation.reward`` describes (``window_s``, ``channels``, ``scale_uv``)."""
        return cls(settings.window_s, settings.channels, settings.scale_uv)

    @classmethod
    def channel_check(cls, settings, ch_names: Sequence[str]) -> tuple[str, str]:
        """At least one of the LPP channels must be in the stream."""
        found = cls.from_settings(settings).reads(ch_names)
        if not found:
            return "fail", (
                f"reward '{cls.mode}' needs one of the LPP channels {settings.channels}; none "
                "is in the stream (rename them in preprocessing.rename, or set the reward's "
                "channels)"
            )
        return "ok", f"reward '{cls.mode}' reads {found}"

    def reads(self, ch_names: Sequence[str]) -> list[str]:
        """The channels of ``ch_names`` this reward averages."""
        return [ch for ch in ch_names if ch in self.channels]

    def __call__(self, epoch: EpochData) -> Reward:
        """Reward of one epoch."""
        names = list(epoch.ch_names)
        picks = [names.index(ch) for ch in self.reads(names)]
        if not picks:
            raise RewardError(
                f"none of the LPP channels {self.channels} is in the epoch ({names[:8]}...)"
            )
        amp = float(epoch_window(epoch, self.window_s)[picks].mean())
        return Reward(1.0 / (1.0 + np.exp(-amp / self.scale_uv)), {"lpp_uv": round(amp, 4)})
