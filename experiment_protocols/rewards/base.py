"""The base of every reward mode's settings, their registry, and old files read anew.

A mode is a :class:`RewardSettings` subclass with ``mode: Literal["NAME"] = "NAME"``;
defining the class registers it in :attr:`RewardSettings.registry`. The modules of this
package are imported the first time the registry is read, so the shipped modes need no
list; a mode defined elsewhere (a lab's module, a test) registers when it is imported.
What the rest of the program needs to know of a mode is a property of its class: what a
high reward stands for (:attr:`~RewardSettings.chases`), which hidden affect it should
raise (:attr:`~RewardSettings.oracle`), whether the worker fits it on the session
(:attr:`~RewardSettings.fitted_on_session`), whether it fits nothing
(:attr:`~RewardSettings.training_free`), and what it runs as without a lab's files or
without ratings.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from experiment_protocols._section import Section

logger = logging.getLogger("eegs.protocol")


class RewardSettings(Section):
    """How an EEG epoch becomes a reward in [0, 1]: the settings of one mode.

    Class attributes a mode sets: ``description`` (one line, for help texts and
    reports), ``training_free`` (fits nothing and reads no file of the lab's),
    ``is_default`` (the mode of a protocol file without the key) and ``flat_keys`` (the
    keys its settings had in the flat ``[generation.reward]`` of older protocol files,
    mapped to their key now, dotted into sub-tables).
    """

    mode: str = Field(description="The reward mode: a module of experiment_protocols/rewards/.")

    registry: ClassVar[dict[str, type[RewardSettings]]] = {}
    description: ClassVar[str] = ""
    training_free: ClassVar[bool] = False
    is_default: ClassVar[bool] = False
    flat_keys: ClassVar[dict[str, str]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        mode = cls.model_fields["mode"].default
        if not isinstance(mode, str):  # a shared intermediate class, not a mode
            return
        known = RewardSettings.registry.get(mode)
        if known is not None and _origin(known) != _origin(cls):
            raise ValueError(
                f"reward mode {mode!r} is registered twice: {_origin(known)} and {_origin(cls)}"
            )
        RewardSettings.registry[mode] = cls

    @property
    def chases(self) -> str:
        """What a high reward stands for: the dataset's ``high_<chases>`` class."""
        return "valence"

    @property
    def oracle(self) -> str:
        """The brain model's hidden affect (valence or arousal) the reward should raise."""
        return "valence"

    @property
    def fitted_on_session(self) -> bool:
        """Whether the worker fits this reward on the session's calibration block."""
        return False

    @classmethod
    def without_files(cls) -> RewardSettings | None:
        """The mode as a brain-model pilot runs it, with no file of the lab's (None: needs one)."""
        return cls()

    def without_ratings(self) -> RewardSettings:
        """What this reward runs as for a participant who gives no ratings (itself)."""
        return self


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _discover() -> None:
    """Import every module of this package once: each defines (so registers) its mode."""
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__package__}.{info.name}")


def reward_modes() -> tuple[str, ...]:
    """Every registered mode, in registration order."""
    _discover()
    return tuple(RewardSettings.registry)


def modes_without_files() -> tuple[str, ...]:
    """The modes a closed loop on the brain model runs with no file of the lab's."""
    return tuple(m for m in reward_modes() if settings_class(m).without_files() is not None)


def settings_class(mode: str) -> type[RewardSettings]:
    """The settings class of ``mode``.

    Raises
    ------
    ValueError
        If no module registered it, naming the modes that are.
    """
    if mode not in RewardSettings.registry:
        _discover()
    try:
        return RewardSettings.registry[mode]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown reward mode {mode!r}; expected one of {', '.join(reward_modes())}"
        ) from None


def default_reward_settings() -> RewardSettings:
    """The settings of a protocol file without ``generation.reward.mode``."""
    reward_modes()
    cls = next(c for c in RewardSettings.registry.values() if c.is_default)
    return cls()


def switch_mode(settings: RewardSettings, mode: str) -> RewardSettings:
    """``settings`` run as ``mode`` instead (a pilot's ``--reward``, a bench's arm).

    Itself when it is that mode; what it holds of that mode (the personal reward's
    fallback index is the asymmetry reward); else that mode's settings without a lab's
    files.

    Raises
    ------
    ValueError
        If ``mode`` is unknown or needs a file of the lab's.
    """
    if settings.mode == mode:
        return settings
    held = settings.without_ratings()
    if held.mode == mode:
        return held
    made = settings_class(mode).without_files()
    if made is None:
        raise ValueError(
            f"reward mode {mode!r} needs a file of the lab's; set generation.reward in the "
            "protocol instead"
        )
    return made


def reward_settings(value: Any) -> Any:
    """``generation.reward`` as the settings class its ``mode`` names (a before-validator).

    A table of the older flat layout (``personal_folds``, ``lpp_window_s``,
    ``asymmetry_pairs``...) is read with its keys moved to where they are now and the
    keys of other modes (which never had an effect) dropped; a warning names them.
    """
    if not isinstance(value, dict):
        return value  # settings already, or not a table (pydantic says why)
    mode = value.get("mode")
    cls = settings_class(mode) if mode is not None else type(default_reward_settings())
    return cls.model_validate(_from_flat(cls, value))


def _from_flat(cls: type[RewardSettings], value: dict[str, Any]) -> dict[str, Any]:
    fields = set(cls.model_fields)
    if value.keys() <= fields:
        return value
    flat = {k for other in RewardSettings.registry.values() for k in other.flat_keys}
    out: dict[str, Any] = {}
    moved, dropped = [], []
    for key, item in value.items():
        if key in fields:
            out.setdefault(key, item)
        elif key in cls.flat_keys:
            *tables, name = cls.flat_keys[key].split(".")
            table = out
            for t in tables:
                table = table.setdefault(t, {})
            table[name] = item
            moved.append(f"{key} -> {cls.flat_keys[key]}")
        elif key in flat:
            dropped.append(key)
        else:
            out[key] = item  # unknown: the schema names it
    if moved or dropped:
        logger.warning(
            "generation.reward (mode %s) has the older flat layout: read %s%s; write the "
            "mode's own keys (experiment_protocols/default.toml)",
            out.get("mode", cls.model_fields["mode"].default),
            ", ".join(moved) or "no key of its mode",
            f", ignored the other modes' {', '.join(dropped)}" if dropped else "",
        )
    return out
