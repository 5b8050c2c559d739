"""Family ``weak``: a weak responder, the mixed family at 10-20 % of every affective gain.

Every affective modulation (valence and arousal: LPP, EPN, posterior alpha
desynchronisation, frontal alpha) is at 10-20 % of its gain, too small to decode single
trials. Its visual ERPs are as everyone's.
"""

from __future__ import annotations

import dataclasses

from models.brain.families.base import AffectCarriers, FamilyDraws, SubjectFamily
from models.brain.families.mixed import MixedFamily


class WeakFamily(SubjectFamily):
    """The mixed family's carriers at a weak responder's gain."""

    name = "weak"
    decodable = False

    @classmethod
    def carriers(cls, draws: FamilyDraws) -> AffectCarriers:
        """Mixed, every affective modulation scaled by the drawn weak gain."""
        return dataclasses.replace(MixedFamily.carriers(draws), gain=draws.weak_gain)
