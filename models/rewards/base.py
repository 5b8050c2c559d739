"""Rewards: how one EEG epoch becomes a number in [0, 1] for the generator.

A reward function is any callable ``f(epoch) -> float`` (or ``-> Reward`` with
details), where ``epoch`` is an :class:`EpochData`; the generation worker only sees that
callable, so a lab can plug in its own. The protocol's ``generation.reward.mode`` names
one of the registered modes, each a :class:`RewardMode` subclass in its own module of
this package (``lpp``, ``asymmetry``, ``personal``, ``affective``, ``semantic``), whose
settings are the class of the same mode in ``experiment_protocols/rewards/``. Defining
the subclass registers it; :func:`reward_class` imports ``models/rewards/MODE.py`` the
first time a mode is asked for, so a mode's heavy libraries load only when it runs
(docs/architecture.md section 13).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

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


def epoch_span(epoch: EpochData, window: tuple[float, float]) -> slice:
    """The samples of ``window`` (s) in ``epoch``."""
    start = int(round((window[0] - epoch.tmin) * epoch.sfreq))
    n = int(round((window[1] - window[0]) * epoch.sfreq))
    if start < 0 or start + n > epoch.data.shape[-1]:
        raise RewardError(
            f"window {list(window)} s is not inside the epoch "
            f"(tmin {epoch.tmin} s, {epoch.data.shape[-1]} samples at {epoch.sfreq:g} Hz)"
        )
    return slice(start, start + n)


def epoch_window(epoch: EpochData, window: tuple[float, float]) -> np.ndarray:
    """The data of ``window`` (s) in ``epoch``."""
    return epoch.data[..., epoch_span(epoch, window)]


class RewardMode:
    """The reward function of one mode: subclass it with ``mode = "NAME"`` to register it.

    The subclass lives in ``models/rewards/NAME.py`` (where :func:`reward_class` looks
    for it), or anywhere that is imported before the mode is asked for (a lab's module,
    a test). Its settings are the protocol's ``generation.reward`` of that mode.
    """

    mode: ClassVar[str]
    registry: ClassVar[dict[str, type[RewardMode]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "mode" not in cls.__dict__:
            return
        known = RewardMode.registry.get(cls.mode)
        if known is not None and _origin(known) != _origin(cls):
            raise ValueError(
                f"reward mode {cls.mode!r} is registered twice: {_origin(known)} and {_origin(cls)}"
            )
        RewardMode.registry[cls.mode] = cls

    @classmethod
    def from_settings(cls, settings: Any) -> RewardFunction:
        """The reward ``generation.reward`` describes, files it names loaded.

        Raises
        ------
        RewardError
            If the settings cannot make a reward here (a reward the worker fits on the
            session, a missing file).
        """
        raise NotImplementedError

    @classmethod
    def channel_check(cls, settings: Any, ch_names: Sequence[str]) -> tuple[str, str] | None:
        """The pre-flight check of the stream's channels (``eegs doctor``).

        ``(level, detail)`` with level ``"ok"``, ``"warn"`` or ``"fail"``; None when the
        reward checks its channels only when it loads (decoders, encoders).
        """
        return None

    def __call__(self, epoch: EpochData) -> float | Reward:
        """Reward of one epoch."""
        raise NotImplementedError


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def reward_class(mode: str) -> type[RewardMode]:
    """The registered reward of ``mode`` (``models/rewards/MODE.py`` imported when needed).

    Raises
    ------
    RewardError
        If no module registers it.
    """
    if mode not in RewardMode.registry and mode.isidentifier():
        name = f"{__package__}.{mode}"
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
    try:
        return RewardMode.registry[mode]
    except KeyError:
        raise RewardError(
            f"no reward registers mode {mode!r} (models/rewards/{mode}.py); registered: "
            f"{', '.join(sorted(RewardMode.registry))}"
        ) from None


def from_settings(settings: Any) -> RewardFunction:
    """The reward function the protocol's ``generation.reward`` section names."""
    return reward_class(settings.mode).from_settings(settings)
