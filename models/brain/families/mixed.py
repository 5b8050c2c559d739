"""Family ``mixed``: the frontal alpha asymmetry and the signed LPP share the valence.

The asymmetry takes a share p ~ U(0.25, 0.75) of the weight (x sqrt(p)) and the signed
LPP the rest (x sqrt(1 - p)).
"""

from __future__ import annotations

import numpy as np

from models.brain.families.base import AffectCarriers, FamilyDraws, SubjectFamily


class MixedFamily(SubjectFamily):
    """Both, with a per-subject share."""

    name = "mixed"

    @classmethod
    def carriers(cls, draws: FamilyDraws) -> AffectCarriers:
        """The drawn weights, split by the subject's share."""
        return AffectCarriers(
            faa=draws.faa * np.sqrt(draws.share),
            lpp_valence=draws.lpp_valence * np.sqrt(1 - draws.share),
        )
