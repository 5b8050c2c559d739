"""What a subject family decides, and the registry of families.

People differ in which components carry their affect, so a reward that reads one of
them fits some people and not others. A family maps what every subject draws
(:class:`FamilyDraws`: the same numbers whatever the family, from the subject seed's own
random stream, so one seed has the same topography in every family) to the weights of
the valence-carrying components (:class:`AffectCarriers`). Everything else about the
subject (the hidden affect, the visual ERPs, the background) is the family's business of
no one: :meth:`models.brain.response._Subject.for_family` applies the carriers, and a
setting that acts on every family (a gain on all affective modulations) goes there, not
into the families.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class AffectCarriers:
    """How strongly each component carries the hidden valence.

    ``faa``: frontal alpha asymmetry per unit valence; ``lpp_valence``: the LPP's
    (signed) valence weight; ``frontal_valence``: the frontal slow wave's; ``gain``:
    scales every affective modulation, valence and arousal (LPP, EPN, posterior alpha
    desynchronisation, frontal alpha).
    """

    faa: float
    lpp_valence: float
    frontal_valence: float = 0.0
    gain: float = 1.0


@dataclass(frozen=True)
class FamilyDraws:
    """What every subject draws for the families, whatever its own family.

    ``standard``: the population-average draw's carriers (LPP, frontal slow wave and
    frontal alpha asymmetry); ``faa``: a frontal alpha asymmetry weight, log-normal
    around 1.4 (0.7-1.8); ``lpp_valence``: an LPP valence weight of 1.6-2.4 with the
    subject's own sign; ``share``: U(0.25, 0.75), a share of the valence variance;
    ``weak_gain``: U(0.10, 0.20), a weak responder's gain.
    """

    standard: AffectCarriers
    faa: float
    lpp_valence: float
    share: float
    weak_gain: float


class SubjectFamily:
    """One family: subclass it with ``name = "NAME"`` (in models/brain/families/NAME.py).

    ``individual_layout``: the subject's own LPP topography and latencies and frontal
    alpha sources and window (every family but the population-average one);
    ``decodable``: its affective responses are large enough to decode single trials
    (the loop bench's goals apply to it).
    """

    name: ClassVar[str]
    individual_layout: ClassVar[bool] = True
    decodable: ClassVar[bool] = True
    registry: ClassVar[dict[str, type[SubjectFamily]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return
        known = SubjectFamily.registry.get(cls.name)
        if known is not None and _origin(known) != _origin(cls):
            raise ValueError(
                f"subject family {cls.name!r} is registered twice: {_origin(known)} and "
                f"{_origin(cls)}"
            )
        SubjectFamily.registry[cls.name] = cls

    @classmethod
    def carriers(cls, draws: FamilyDraws) -> AffectCarriers:
        """The weights of the valence-carrying components, from the subject's draws."""
        raise NotImplementedError


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def family_class(name: str) -> type[SubjectFamily]:
    """The registered family ``name`` (models/brain/families/NAME.py imported when needed).

    Raises
    ------
    ValueError
        If no module registers it.
    """
    if name not in SubjectFamily.registry and name.isidentifier():
        module = f"{__package__}.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    try:
        return SubjectFamily.registry[name]
    except KeyError:
        raise ValueError(
            f"unknown subject family {name!r}; registered: "
            f"{', '.join(sorted(SubjectFamily.registry))}"
        ) from None
