"""The reward modes' settings (``[generation.reward]``), one module per mode.

``generation.reward`` is a union chosen by its ``mode``: each module of this package
defines one :class:`RewardSettings` subclass whose ``mode`` is a ``Literal`` of its name,
and defining it registers the mode (as a message type registers itself in
``workers/messages.py``), so the protocol accepts it. The reward it configures lives in
``models/rewards/MODE.py`` and registers there under the same name; nothing else lists
the modes (docs/architecture.md section 13).
"""

from experiment_protocols.rewards.base import (
    RewardSettings,
    default_reward_settings,
    modes_without_files,
    reward_modes,
    reward_settings,
    settings_class,
    switch_mode,
)

__all__ = [
    "RewardSettings",
    "default_reward_settings",
    "modes_without_files",
    "reward_modes",
    "reward_settings",
    "settings_class",
    "switch_mode",
]
