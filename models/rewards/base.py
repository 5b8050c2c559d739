"""Rewards: how one EEG epoch becomes a number in [0, 1] for the generator.

A reward function is any callable ``f(epoch) -> float`` (or ``-> Reward`` with
details), where ``epoch`` is an :class:`EpochData`; the generation worker only sees that
callable, so a lab can plug in its own. These are built in (protocol
``generation.reward.mode``):

- ``affective``: the decoder's probability of the target class (ATM-S-FC or EEGNet,
  :mod:`models.decoders.classifiers`) on the 0-1 s window (a decoder fitted during the session
  on its calibration block is :mod:`workers.generation.personal_fit`);
- ``semantic``: cosine similarity between the ATM-S embedding of the epoch and a target
  EEG embedding, mapped from [-1, 1] to [0, 1];
- ``lpp``: a training-free index, the mean late positive potential (Schupp et al. 2000;
  Hajcak et al. 2010: larger for emotionally arousing pictures) over centro-parietal
  channels, squashed by a logistic. It needs no calibration, so the worker runs out of
  the box; it tracks arousal, not valence.
- ``asymmetry``: a training-free valence index, the frontal alpha asymmetry
  ln P(right) - ln P(left) over homologous frontal pairs after the stimulus (less
  left-frontal alpha for pleasant pictures; Davidson 1992; Coan & Allen 2004), divided
  by its typical single-trial spread and squashed by a logistic. Higher means more
  pleasant, so it chases amusement without a calibration block. It reads induced
  power, not the slow frontal potential, which the acquisition's high-pass distorts.
- ``personal`` (default.toml's and pilot.toml's mode): an estimator of the participant's
  own valence ratings, fitted by the worker on the session's calibration block and
  cross-validated inside it; the asymmetry index when the participant does not decode
  above chance (:mod:`models.rewards.personal`, :mod:`workers.generation.personal_fit`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EpochData:
    """One preprocessed epoch: (n_channels, n_times) in µV, starting at ``tmin`` s."""

    data: np.ndarray
    ch_names: Sequence[str]
    sfreq: float
    tmin: float


@dataclass(frozen=True)
class Reward:
    """A reward value and what it came from (decoder probabilities, similarity...)."""

    value: float
    details: dict[str, Any] = field(default_factory=dict)


RewardFunction = Callable[[EpochData], "float | Reward"]


class RewardError(ValueError):
    """An epoch or a model that the reward function cannot use."""


def as_reward(out: float | Reward) -> Reward:
    """Normalise what a reward function returned."""
    return out if isinstance(out, Reward) else Reward(float(out))


def _span(epoch: EpochData, window: tuple[float, float]) -> slice:
    """The samples of ``window`` (s) in ``epoch``."""
    start = int(round((window[0] - epoch.tmin) * epoch.sfreq))
    n = int(round((window[1] - window[0]) * epoch.sfreq))
    if start < 0 or start + n > epoch.data.shape[-1]:
        raise RewardError(
            f"window {list(window)} s is not inside the epoch "
            f"(tmin {epoch.tmin} s, {epoch.data.shape[-1]} samples at {epoch.sfreq:g} Hz)"
        )
    return slice(start, start + n)


def _window(epoch: EpochData, window: tuple[float, float]) -> np.ndarray:
    return epoch.data[..., _span(epoch, window)]


class LppReward:
    """Logistic of the mean LPP amplitude (µV) over the named channels."""

    def __init__(self, window_s: tuple[float, float], channels: Sequence[str], scale_uv: float):
        self.window_s = tuple(window_s)
        self.channels = list(channels)
        self.scale_uv = scale_uv

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
        amp = float(_window(epoch, self.window_s)[picks].mean())
        return Reward(1.0 / (1.0 + np.exp(-amp / self.scale_uv)), {"lpp_uv": round(amp, 4)})


class AsymmetryReward:
    """Logistic of the frontal alpha asymmetry (right minus left log alpha power)."""

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
        order.
        """
        have = set(ch_names)
        pairs = [(a, b) for a, b in self.pairs if a in have and b in have]
        return [a for a, _ in pairs] + [b for _, b in pairs]

    def __call__(self, epoch: EpochData) -> Reward:
        """Reward of one epoch."""
        from scipy.signal import sosfiltfilt

        names = list(epoch.ch_names)
        picks = [names.index(ch) for ch in self.reads(names)]
        if not picks:
            raise RewardError(
                f"none of the frontal pairs {self.pairs} is in the epoch ({names[:8]}...)"
            )
        span = _span(epoch, self.window_s)
        data = np.asarray(epoch.data, dtype=np.float64)[picks]
        alpha = sosfiltfilt(self._band(epoch.sfreq), data, axis=-1)[:, span]
        power = (alpha**2).mean(-1) + 1e-12
        n = len(picks) // 2
        faa = float(np.mean(np.log(power[n:]) - np.log(power[:n])))
        return Reward(
            1.0 / (1.0 + np.exp(-faa / self.alpha_scale)), {"alpha_asymmetry": round(faa, 4)}
        )


class AffectiveReward:
    """Decoder probability of ``target_class`` on the 0-1 s window."""

    def __init__(self, classifier, target_class: str, class_names: Sequence[str]):
        if target_class not in class_names:
            raise RewardError(f"target class {target_class!r} is not one of {list(class_names)}")
        self.classifier = classifier
        self.column = list(class_names).index(target_class)
        self.class_names = list(class_names)

    def __call__(self, epoch: EpochData) -> Reward:
        """Reward of one epoch."""
        x = _window(epoch, (0.0, 1.0))[None].astype(np.float32)
        proba = self.classifier.predict_proba(x)[0]
        return Reward(
            float(proba[self.column]),
            {
                "proba": {
                    n: round(float(p), 6) for n, p in zip(self.class_names, proba, strict=True)
                }
            },
        )


class SemanticReward:
    """(1 + cos(ATM-S embedding, target)) / 2."""

    def __init__(self, encoder, target: np.ndarray, channels: Sequence[str] | None = None):
        self.encoder = encoder
        t = np.asarray(target, dtype=np.float64).reshape(-1)
        self.target = t / (np.linalg.norm(t) + 1e-12)
        self.channels = list(channels) if channels else None

    def __call__(self, epoch: EpochData) -> Reward:
        """Reward of one epoch."""
        import torch

        x = _window(epoch, (0.0, 1.0))
        if self.channels is not None:
            index = {ch: i for i, ch in enumerate(epoch.ch_names)}
            missing = [ch for ch in self.channels if ch not in index]
            if missing:
                raise RewardError(f"the encoder needs channels {missing} absent from the epoch")
            x = x[[index[ch] for ch in self.channels]]
        t0 = time.perf_counter()
        with torch.no_grad():
            emb = self.encoder(torch.as_tensor(x[None], dtype=torch.float32))[0].double().numpy()
        encode_ms = (time.perf_counter() - t0) * 1e3
        cos = float(emb @ self.target / (np.linalg.norm(emb) + 1e-12))
        return Reward(
            (1.0 + cos) / 2.0, {"cosine": round(cos, 6), "encode_ms": round(encode_ms, 3)}
        )


def load_target_embedding(path: str | Path) -> np.ndarray:
    """A target EEG embedding from ``.npy`` (no pickles) or ``.safetensors`` (first tensor)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"target embedding {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
        if not tensors:
            raise RewardError(f"{path} holds no tensor")
        return next(iter(tensors.values())).astype(np.float64).reshape(-1)
    try:
        return np.load(path, allow_pickle=False).astype(np.float64).reshape(-1)
    except ValueError as err:
        raise RewardError(f"{path}: not a plain .npy array ({err})") from None


def asymmetry_from_settings(settings) -> AsymmetryReward:
    """The asymmetry index of ``generation.reward`` (also the personal reward's fallback)."""
    return AsymmetryReward(
        settings.asymmetry_pairs,
        settings.asymmetry_band_hz,
        settings.asymmetry_window_s,
        settings.asymmetry_alpha_scale,
    )


def from_settings(settings) -> RewardFunction:
    """The reward function the protocol's ``generation.reward`` section names."""
    if settings.mode == "lpp":
        return LppReward(settings.lpp_window_s, settings.lpp_channels, settings.lpp_scale_uv)
    if settings.mode == "asymmetry":
        return asymmetry_from_settings(settings)
    if settings.mode == "personal":
        raise RewardError(
            "generation.reward.mode = 'personal' is fitted on the participant's own ratings "
            "during a session (workers/generation/personal_fit.py); offline, fit it with "
            "workers.generation.personal_fit.personal_reward_for (calibration epochs + ratings)"
        )
    if settings.mode == "affective":
        if not settings.decoder:
            raise RewardError(
                "generation.reward.mode = 'affective' needs generation.reward.decoder "
                "(a classifier file from the calibration block)"
            )
        if settings.decoder == "calibration":
            raise RewardError(
                "generation.reward.decoder = 'calibration' is fitted by the generation worker "
                "during a session (workers/generation/personal_fit.py); it is not a file to load"
            )
        from models.decoders.classifiers import CLASS_NAMES, load_classifier

        return AffectiveReward(
            load_classifier(settings.decoder), settings.target_class, CLASS_NAMES
        )
    from models.decoders.atms import ATMS, load_atms
    from models.montage import ATM_CHANNELS

    encoder = load_atms(settings.encoder) if settings.encoder else ATMS()
    encoder.eval()
    channels = ATM_CHANNELS if encoder.config.n_channels == len(ATM_CHANNELS) else None
    return SemanticReward(encoder, load_target_embedding(settings.target_embedding), channels)
