"""Family ``lpp``: the late positive potential alone carries valence, with the subject's sign.

The LPP's valence weight is 1.6-2.4 (standard: 0.8) and its SIGN is the subject's own,
+ or - with equal chance: some people's LPP grows for pleasant pictures (a positivity
offset), others' for unpleasant ones (the negativity bias, Ito et al. 1998). A signed
weight is what lets a reward calibrated on the person chase valence through the LPP,
while a fixed-sign LPP index chases it up for half the subjects and down for the other
half; an arousal-only LPP would carry no valence at all. No valence in the frontal
alpha or slow wave.
"""

from __future__ import annotations

from models.brain.families.base import AffectCarriers, FamilyDraws, SubjectFamily


class LppFamily(SubjectFamily):
    """The LPP only, signed per subject."""

    name = "lpp"

    @classmethod
    def carriers(cls, draws: FamilyDraws) -> AffectCarriers:
        """The drawn signed LPP weight; no frontal alpha asymmetry."""
        return AffectCarriers(faa=0.0, lpp_valence=draws.lpp_valence)
