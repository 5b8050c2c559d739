"""Family ``standard`` (the default): valence in the LPP, the frontal slow wave and the FAA.

The population-average subject of models/brain/response.py: the LPP grows with arousal
and, per subject, with negative valence (the negativity bias), the frontal slow wave and
the frontal alpha asymmetry are proportional to valence, and the LPP topography and
frontal alpha sources are the population's (the LPP centred on Pz).
"""

from __future__ import annotations

from models.brain.families.base import AffectCarriers, FamilyDraws, SubjectFamily


class StandardFamily(SubjectFamily):
    """Every affective component as the population-average draw has it."""

    name = "standard"
    individual_layout = False

    @classmethod
    def carriers(cls, draws: FamilyDraws) -> AffectCarriers:
        """The standard draw's own weights."""
        return draws.standard
