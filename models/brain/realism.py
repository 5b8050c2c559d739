"""How much of a subject's hidden affect one trial of its EEG carries: the realism presets.

Before its calibration (``clean``) the brain model expressed each image's hidden affect in
full on every trial: the anchors of ``eegs bench estimator`` (shrinkage LDA on window means,
Blankertz et al. 2011, NeuroImage 56:814-825; xDAWN covariances + tangent space; the frontal
alpha asymmetry index) read its valence at out-of-fold r 0.4-0.7 from 48 trials. Real EEG is
far harder to read. On the shipped eeg-notebooks recordings (Muse, faces vs houses, a strong
visual ERP contrast; issue 23's table) the same anchors are not reliably above chance at 48
trials (mean r -0.08 to 0.16 over draws) and reach r 0.12-0.25 at 200. Valence within a
picture set is a subtler contrast still: the LPP tracks arousal more than valence, and its
emotional-minus-neutral difference scores are far less reliable than its amplitude, so many
trials are needed (Moran, Jendrusina & Moser 2013, Brain Research 1516:66-75); frontal alpha
asymmetry is mostly a trait, with little state (trial-to-trial) variance (Coan & Allen 2004,
Biological Psychology 67:7-49).

``lab`` is therefore set so that the anchors' decodability of the hidden valence on the
brain model falls within that range at 48, 96 and 200 trials, for every family but
``weak`` (measured by ``eegs bench realism``, README section "Pilots that predict a
session"): it was chosen against the range the real recordings span, not fitted to one of
them. ``strong`` is twice its affective signal (a strong responder on a good cap, above the
range), ``faint`` half (a faint responder or a noisy headset). The hidden affect, the visual
ERPs and the background are the same at every level: only the share of the affect one
trial carries changes.
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
    "strong": Realism(affect_gain=0.6, faa_gain=0.4),
    "lab": Realism(affect_gain=0.3, faa_gain=0.2),
    "faint": Realism(affect_gain=0.15, faa_gain=0.1),
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
