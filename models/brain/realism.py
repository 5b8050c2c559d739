"""How much of a subject's hidden affect one trial of its EEG carries: the realism presets.

Placeholder docstring, written once calibrated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["PRESETS", "Realism", "realism"]


@dataclass(frozen=True)
class Realism:
    """Gains on the affective part of the response, applied in every family after its carriers.

    ``affect_gain`` scales every affective modulation of the evoked response and of the
    posterior alpha (valence and arousal: LPP, EPN, frontal slow wave, the arousal part
    of the posterior alpha desynchronisation); ``faa_gain`` scales the frontal alpha
    asymmetry's change per unit valence. The hidden affect (the oracle), the visual
    ERPs and the background do not change.
    """

    affect_gain: float = 1.0
    faa_gain: float = 1.0

    def __post_init__(self) -> None:
        for name in ("affect_gain", "faa_gain"):
            value = getattr(self, name)
            if not 0 <= value <= 10:
                raise ValueError(f"realism {name} must be within [0, 10], got {value}")

    def replace(self, **changes: float | None) -> Realism:
        """The same with the given numbers (``None`` keeps this one's)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


PRESETS: dict[str, Realism] = {
    "clean": Realism(),
    "strong": Realism(affect_gain=0.6, faa_gain=0.5),
    "lab": Realism(affect_gain=0.3, faa_gain=0.25),
    "faint": Realism(affect_gain=0.15, faa_gain=0.12),
}


def realism(name: str) -> Realism:
    """The preset ``name``.

    Raises
    ------
    ValueError
        If there is no such preset.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown brain-model realism {name!r}; expected one of {', '.join(PRESETS)}"
        ) from None
