"""Family ``asymmetry``: the frontal alpha asymmetry alone carries valence.

Its weight is log-normal around 1.4 (0.7-1.8; the standard family's: 1.0 +- 0.3); no
valence in the LPP or the frontal slow wave.
"""

from __future__ import annotations

from models.brain.families.base import AffectCarriers, FamilyDraws, SubjectFamily


class AsymmetryFamily(SubjectFamily):
    """Frontal alpha asymmetry only."""

    name = "asymmetry"

    @classmethod
    def carriers(cls, draws: FamilyDraws) -> AffectCarriers:
        """The drawn asymmetry weight; nothing in the LPP."""
        return AffectCarriers(faa=draws.faa, lpp_valence=0.0)
