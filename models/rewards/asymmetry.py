"""Mode ``asymmetry``: a training-free valence index, the frontal alpha asymmetry.

ln P(right) - ln P(left) over homologous frontal pairs after the stimulus (less
left-frontal alpha for pleasant pictures; Davidson 1992; Coan & Allen 2004), divided by
its typical single-trial spread and squashed by a logistic. Higher means more pleasant,
so it chases the pleasant class without a calibration block. It reads induced power,
not the slow frontal potential, which the acquisition's high-pass distorts. It is also
the personal reward's fallback (:mod:`models.rewards.personal`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.montage import homologous_pairs
from models.rewards.base import EpochData, Reward, RewardError, RewardMode, epoch_span


class AsymmetryReward(RewardMode):
    """Logistic of the frontal alpha asymmetry (right minus left log alpha power)."""

    mode = "asymmetry"

    def __init__(
        self,
        pairs: Sequence[Sequence[str]],
        band_hz: tuple[float, float],
        window_s: tuple[float, float],
        alpha_scale: float,
    ):
        self.pairs = [(str(a), str(b)) for a, b in pairs]
        self.band_hz = tuple(band_hz)
        self.window_s = tuple(window_s)
        self.alpha_scale = alpha_scale
        self._sos: dict[float, np.ndarray] = {}

    @classmethod
    def from_settings(cls, settings) -> AsymmetryReward:
        """The index ``settings`` describe (the reward's, or the personal reward's fallback)."""
        return cls(settings.pairs, settings.band_hz, settings.window_s, settings.alpha_scale)

    @classmethod
    def channel_check(cls, settings, ch_names: Sequence[str]) -> tuple[str, str]:
        """At least one frontal pair must be in the stream."""
        found = cls.from_settings(settings).reads(ch_names)
        if not found:
            return "fail", (
                f"reward '{cls.mode}' needs one of the frontal pairs "
                f"{[list(p) for p in settings.pairs]}; none is in the stream (rename them in "
                "preprocessing.rename, or set the reward's pairs)"
            )
        return "ok", f"reward '{cls.mode}' reads {found}"

    def _band(self, sfreq: float) -> np.ndarray:
        if sfreq not in self._sos:
            from scipy.signal import butter

            if self.band_hz[1] >= sfreq / 2:
                raise RewardError(
                    f"alpha band {list(self.band_hz)} Hz is not below Nyquist ({sfreq / 2:g} Hz)"
                )
            self._sos[sfreq] = butter(4, self.band_hz, btype="band", fs=sfreq, output="sos")
        return self._sos[sfreq]

    def reads(self, ch_names: Sequence[str]) -> list[str]:
        """The channels of ``ch_names`` this reward reads.

        The left channels of the complete pairs, then their right channels in the same
        order. A montage that holds none of the configured pairs (a Muse headband's AF7
        and AF8 beside F3/F4...) is read on its own homologous frontal pairs
        (:func:`models.montage.homologous_pairs`).
        """
        have = set(ch_names)
        pairs = [(a, b) for a, b in self.pairs if a in have and b in have]
        if not pairs:
            pairs = homologous_pairs(ch_names)
        return [a for a, _ in pairs] + [b for _, b in pairs]

    def asymmetry(
        self, data: np.ndarray, ch_names: Sequence[str], sfreq: float, tmin: float
    ) -> np.ndarray:
        """The asymmetry ln P(right) - ln P(left) over the pairs, of epochs (..., ch, times)."""
        from scipy.signal import sosfiltfilt

        names = list(ch_names)
        picks = [names.index(ch) for ch in self.reads(names)]
        if not picks:
            raise RewardError(
                f"none of the frontal pairs {self.pairs} is in the epoch ({names[:8]}...)"
            )
        x = np.asarray(data, dtype=np.float64)
        span = epoch_span(EpochData(x, names, sfreq, tmin), self.window_s)
        alpha = sosfiltfilt(self._band(sfreq), x[..., picks, :], axis=-1)[..., span]
        power = (alpha**2).mean(-1) + 1e-12
        n = len(picks) // 2
        return np.mean(np.log(power[..., n:]) - np.log(power[..., :n]), axis=-1)

    def __call__(self, epoch: EpochData) -> Reward:
        """Reward of one epoch."""
        faa = float(self.asymmetry(epoch.data, epoch.ch_names, epoch.sfreq, epoch.tmin))
        return Reward(
            1.0 / (1.0 + np.exp(-faa / self.alpha_scale)), {"alpha_asymmetry": round(faa, 4)}
        )
