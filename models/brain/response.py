"""The black-box brain model: a simulated participant whose EEG reacts to image pixels.

:class:`BrainModel` turns an image into the EEG of one simulated subject: ongoing
background EEG (:mod:`models.brain.background`) plus a stimulus-locked response
computed from interpretable pixel features (:mod:`models.brain.features`) through
hidden, per-subject weights. The streaming process (``eegs brain-model``) and the
offline :meth:`BrainModel.simulate_epochs` share one code path,
:class:`StreamSimulator`.

Model and literature
--------------------
The simulator follows the component-based approach of SEREEGA (Krol et al. 2018,
J Neurosci Methods 309:13-24): each response is a sum of components, each a fixed
scalp pattern times a time course, with trial-to-trial amplitude and latency
variability. Scalp patterns are Gaussians of the great-circle distance on a spherical
10-05 montage, average-referenced over the 64-channel montage (a simplification of
a dipole forward model; polarity inverts far from the centre as in real recordings).

Sensory (visual) components, driven by image content only:

- C1 (75 ms, Oz): polarity follows whether the lower or the upper half of the image
  holds more contrast energy (Jeffreys & Axford 1972; Clark, Fan & Hillyard 1995).
- P1 (105 ms, PO7/PO8): grows with RMS contrast through a Naka-Rushton saturation and
  peaks earlier at high contrast; larger over the hemisphere contralateral to the
  half of the image with more contrast energy (early ERPs track contrast energy:
  Groen et al. 2013, J Neurosci 33:18814).
- Chromatic negativity (135 ms, Oz): scales with colourfulness (chromatic-onset VEP;
  Rabin et al. 1994; Crognale 2002).
- N1 (170 ms, PO7/PO8): scales with edge density and fine texture (spatial
  coherence/contrast statistics, Scholte et al. 2009), lateralised like P1.
- P2 (220 ms, Cz): modest, brighter images larger.
- Sustained posterior negativity (280-950 ms, POz): scales with mirror symmetry
  (Makin et al. 2012, 2016).

Affective components, driven by the hidden valence and arousal of the image:

- Early posterior negativity (260 ms, P7/P8): larger for arousing images (Schupp et
  al. 2003, 2006; Junghöfer et al. 2001).
- Late positive potential (350-1000 ms, Pz): grows with arousal (Cuthbert et al. 2000;
  Schupp et al. 2000) and, per subject, with negative valence (the negativity bias,
  Ito et al. 1998); the valence weight's sign and size vary between subjects.
- Frontal slow wave asymmetry (300-1000 ms, F3 vs F4): a lateralised slow potential
  proportional to valence, after the approach/withdrawal model of frontal asymmetry
  (Davidson 1992; Harmon-Jones et al. 2010). A documented modelling choice.
- Induced alpha (not phase-locked, so absent from :meth:`BrainModel.evoked`):
  posterior alpha desynchronises after onset, more for arousing images (Aftanas et
  al. 2002; De Cesarei & Codispoti 2011); frontal alpha becomes asymmetric with
  valence (less left-frontal alpha for pleasant images; Davidson 1992; Coan & Allen
  2004).

Hidden affect (:meth:`BrainModel.affect`, the ORACLE, for evaluation only):

- valence in (-1, 1) = tanh of a weighted sum of standardised features (population
  priors: brighter (Valdez & Mehrabian 1994), more saturated, more symmetric
  (Jacobsen & Höfel 2003), more curved (Bar & Neta 2006) images are more pleasant)
  plus a per-subject preferred hue in the red-green/yellow-blue plane (colour
  preferences are individual; Palmer & Schloss 2010), an inverted-U preference
  for visual complexity (edge density) peaking at a per-subject level (Berlyne 1971),
  and per-subject weights on pairwise conjunctions of features (liking bright *and*
  saturated images, say, but not either alone);
- arousal in (0, 1) = logistic of a weighted sum (saturation, contrast, redness,
  edge density and angularity raise arousal; Valdez & Mehrabian 1994; Wilson 1966).

Both drives are standardised over plausible feature vectors, then valence =
tanh(0.8 z) and arousal = logistic(1.2 z + subject bias). Every subject's weights are
the population prior plus an individual deviation larger than the prior, drawn from
``subject_seed``: two subjects rank images differently (median Spearman rho over
pairs of seeds about 0, 2-5 % of pairs above 0.5 on 50 procedural images).
Subject-specific ERP latencies (±6 ms), component gains (log-normal, 20 %) and the
individual alpha frequency (±0.7 Hz) are drawn from the same seed.

Amplitudes
----------
``response_uv`` is the RMS of the response over the 64-channel montage and 0-1 s
for an average image; ``snr`` is that RMS divided by the RMS of the background over
the same montage, so the background RMS is ``response_uv / snr``. Single-trial ERPs
are well below the ongoing EEG; the defaults (1.5 µV, 0.15: background 10 µV RMS,
15 µV over the occipital alpha) give grand averages of a few µV at the peak channels
(P1 1-3 µV at 105-115 ms, N1 about -5 µV at 170 ms, EPN about -1.5 µV, LPP about
3 µV, from -2 to 7 µV between images), as in the studies above, and a background
power spectrum falling as 1/f^1.5 with an alpha peak an order of magnitude above it
at Oz.

Subject families
----------------
People differ in which components carry their affect, so a reward that reads one of
them fits some people and not others. ``family`` chooses what carries the hidden
VALENCE; everything else about the subject stays. Each family is one module of
:mod:`models.brain.families` (``standard``, the default: everything above;
``asymmetry``, ``lpp``, ``mixed``, ``weak``), which maps the numbers every subject draws
(:class:`~models.brain.families.base.FamilyDraws`) to the weights of the valence-carrying
components; :meth:`_Subject.for_family` applies them.

Arousal keeps its components (EPN, LPP, posterior alpha desynchronisation) in every
family but the weak responder's. Every family but ``standard`` draws its subject's own LPP
topography (maximum within ~15 degrees of Pz, width 0.45-0.7 rad), LPP onset (300-450
ms) and offset (750-1050 ms), frontal alpha sources (each hemisphere's moved on its
own, width 0.32-0.5 rad) and frontal alpha window (onset 220-400 ms, offset
0.9-1.25 s), from a random stream of the subject seed of its own: the hidden affect
(:meth:`BrainModel.affect`), the visual ERPs (same µV: the response is scaled on the
standard family's), the rest of the background and the standard family's samples do
not change with the family, and one seed has the same topography in every family that
uses it.
Only the brain model knows its family: it is never in the EEG stream or the epochs.

With a learned image-to-EEG model (:mod:`models.brain.learned`) the learned response
replaces the parametric one in the EEG; :meth:`BrainModel.affect` still reports the
parametric hidden affect.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.brain.background import (
    FRONTAL_ALPHA_CENTRES,
    FRONTAL_ALPHA_WIDTH,
    BackgroundEEG,
    BackgroundSpec,
    sphere_gaussian,
)
from models.brain.families.base import AffectCarriers, FamilyDraws, family_class
from models.brain.features import (
    FEATURE_NORMS,
    FEATURES,
    ImageError,
    ImageLike,
    image_features,
    load_image,
    standardise,
)
from models.brain.realism import Realism
from models.brain.realism import realism as _realism
from models.montage import ATM_CHANNELS, STANDARD_64

if TYPE_CHECKING:
    from models.brain.learned import LearnedResponse

__all__ = [
    "ATM_CHANNELS",
    "DEFAULT_RESPONSE_UV",
    "DEFAULT_SNR",
    "PHOTODIODE",
    "STANDARD_64",
    "BrainModel",
    "ImageError",
    "StreamSimulator",
]

#: Name of the optional photodiode channel of the stream.
PHOTODIODE = "Photodiode"

DEFAULT_SNR = 0.15
DEFAULT_RESPONSE_UV = 1.5

_RESPONSE_S = 1.5  # long enough for the LPP to decay
_REF_SFREQ = 250.0  # rate at which the response RMS is normalised
_N_REF_IMAGES = 64
_SUSTAIN_RISE_S = 0.04
_SUSTAIN_FALL_S = 0.1


# -- montage -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _montage_positions() -> dict[str, np.ndarray]:
    import mne

    pos = mne.channels.make_standard_montage("spherical_1005").get_positions()["ch_pos"]
    return {name.lower(): p / np.linalg.norm(p) for name, p in pos.items()}


def channel_positions(ch_names: Sequence[str]) -> np.ndarray:
    """Unit position vectors of 10-05 channel names (case-insensitive), (n, 3).

    Raises
    ------
    ValueError
        If a name is not a 10-05 position.
    """
    table = _montage_positions()
    unknown = [ch for ch in ch_names if ch.lower() not in table]
    if unknown:
        raise ValueError(
            f"channel(s) {unknown} are not 10-05 positions; the brain model needs standard "
            f"names such as {STANDARD_64[:6]}"
        )
    return np.stack([table[ch.lower()] for ch in ch_names])


# -- components ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Component:
    name: str
    centre: str  # 10-05 channel at the pattern's maximum
    width: float  # pattern width, radians on the head sphere
    sustained: bool  # False: Gaussian peak at `start` with sd `end`; True: plateau
    start: float  # s
    end: float  # s
    peak_uv: float  # amplitude at the centre for gain 1, before referencing
    # a subject's own centre (a direction on the head sphere) instead of `centre`
    centre_xyz: tuple[float, float, float] | None = None

    def centre_position(self) -> np.ndarray:
        """Unit vector of the pattern's maximum."""
        if self.centre_xyz is None:
            return channel_positions([self.centre])[0]
        xyz = np.asarray(self.centre_xyz, dtype=float)
        return xyz / np.linalg.norm(xyz)


_COMPONENTS: tuple[_Component, ...] = (
    _Component("C1", "Oz", 0.30, False, 0.075, 0.010, 2.5),
    _Component("P1-left", "PO7", 0.40, False, 0.105, 0.014, 4.0),
    _Component("P1-right", "PO8", 0.40, False, 0.105, 0.014, 4.0),
    _Component("chromatic", "Oz", 0.45, False, 0.135, 0.020, -3.0),
    _Component("N1-left", "PO7", 0.40, False, 0.170, 0.022, -5.0),
    _Component("N1-right", "PO8", 0.40, False, 0.170, 0.022, -5.0),
    _Component("P2", "Cz", 0.60, False, 0.220, 0.030, 2.5),
    _Component("SPN", "POz", 0.55, True, 0.280, 0.950, -2.0),
    _Component("EPN-left", "P7", 0.45, False, 0.260, 0.035, -2.5),
    _Component("EPN-right", "P8", 0.45, False, 0.260, 0.035, -2.5),
    _Component("LPP", "Pz", 0.55, True, 0.350, 1.000, 5.0),
    _Component("FSW-left", "F3", 0.45, True, 0.300, 1.000, 3.0),
    _Component("FSW-right", "F4", 0.45, True, 0.300, 1.000, 3.0),
)
_N_COMP = len(_COMPONENTS)
_IDX = {c.name: i for i, c in enumerate(_COMPONENTS)}
#: Induced alpha gain changes: (posterior, left frontal, right frontal), 0.2/0.3 s on.
_ALPHA_WINDOWS = ((0.2, 0.9), (0.3, 1.1), (0.3, 1.1))

_F = {name: i for i, name in enumerate(FEATURES)}


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-x))


# -- the hidden subject --------------------------------------------------------------------
#: Population prior of the valence and arousal weights on standardised features.
_VALENCE_PRIOR = {"brightness": 0.35, "saturation": 0.15, "colourfulness": 0.1,
                  "high_freq": -0.1, "symmetry": 0.25, "curvature": 0.25}  # fmt: skip
_AROUSAL_PRIOR = {"brightness": -0.1, "contrast": 0.35, "saturation": 0.35,
                  "colourfulness": 0.2, "red_green": 0.25, "edge_density": 0.3,
                  "high_freq": 0.15, "symmetry": -0.1, "curvature": -0.15}  # fmt: skip
_INDIVIDUAL_SD = {"valence": 0.6, "arousal": 0.4}
# subject families (_family_draws): LPP valence weight range, median FAA weight, weak gain
_FAMILY_LPP_VALENCE = (1.6, 2.4)
_FAMILY_FAA = 1.4
_WEAK_GAIN = (0.10, 0.20)
_PAIR_SD = 0.45  # per-subject weights of feature conjunctions (z_i * z_j) in valence
_POSITIONAL = ("lower_upper", "left_right")  # where contrast sits: no affect


@dataclass(frozen=True)
class _Subject:
    """Hidden parameters of one simulated subject (drawn from its seed)."""

    valence_w: np.ndarray
    arousal_w: np.ndarray
    valence_pairs: np.ndarray  # (n_features, n_features) upper-triangular conjunction weights
    arousal_bias: float
    hue_angle: float
    hue_strength: float
    complexity_peak: float
    latency_shift: np.ndarray  # per component, s
    gain: np.ndarray  # per component
    lpp_arousal: float
    lpp_valence: float
    frontal_valence: float
    epn_arousal: float
    erd: float
    faa: float
    alpha_hz: float
    affect_norm: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 1.0), (0.0, 1.0))
    # what the subject family changes (the defaults are the standard family's)
    family: str = "standard"
    components: tuple[_Component, ...] = _COMPONENTS
    erd_arousal: float = 0.35  # posterior alpha desynchronisation per unit arousal
    alpha_windows: tuple[tuple[float, float], ...] = _ALPHA_WINDOWS
    frontal_alpha_centres: tuple[tuple[float, float, float], ...] = FRONTAL_ALPHA_CENTRES
    frontal_alpha_width: float = FRONTAL_ALPHA_WIDTH
    # the realism's share of the image-to-image affect the ERPs express (``expressed``)
    expression: float = 1.0

    @classmethod
    def draw(cls, seed: int, alpha_hz: float) -> _Subject:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
        nf = len(FEATURES)
        free = np.array([f not in _POSITIONAL for f in FEATURES], dtype=float)
        v_prior = np.array([_VALENCE_PRIOR.get(f, 0.0) for f in FEATURES])
        a_prior = np.array([_AROUSAL_PRIOR.get(f, 0.0) for f in FEATURES])
        valence_w = v_prior + _INDIVIDUAL_SD["valence"] * rng.standard_normal(nf) * free
        arousal_w = a_prior + _INDIVIDUAL_SD["arousal"] * rng.standard_normal(nf) * free
        pairs = np.triu(rng.standard_normal((nf, nf)), 1) * np.outer(free, free)
        pairs *= _PAIR_SD
        common = rng.normal(0.0, 0.006)
        subject = cls(
            valence_w=valence_w,
            arousal_w=arousal_w,
            valence_pairs=pairs,
            arousal_bias=float(rng.normal(0.0, 0.3)),
            hue_angle=float(rng.uniform(0, 2 * np.pi)),
            hue_strength=float(rng.uniform(0.4, 1.0)),
            complexity_peak=float(rng.normal(0.0, 0.8)),
            latency_shift=common + rng.normal(0.0, 0.004, _N_COMP),
            gain=rng.lognormal(0.0, 0.2, _N_COMP),
            lpp_arousal=float(max(0.2, rng.normal(1.0, 0.25))),
            lpp_valence=float(rng.normal(-0.8, 0.3)),
            frontal_valence=float(rng.normal(1.0, 0.25)),
            epn_arousal=float(max(0.2, rng.normal(1.0, 0.25))),
            erd=float(max(0.2, rng.normal(1.0, 0.2))),
            faa=float(rng.normal(1.0, 0.3)),
            alpha_hz=float(np.clip(alpha_hz + rng.normal(0.0, 0.7), 7.5, 13.0)),
        )
        # centre and scale the drives over plausible images, so that valence spreads
        # over (-1, 1) and arousal over (0, 1) whatever the weights
        v, a = subject._raw_affect(_random_features(np.random.default_rng(54321), 512))
        norm = ((float(v.mean()), float(v.std())), (float(a.mean()), float(a.std())))
        return dataclasses.replace(subject, affect_norm=norm)

    def for_family(self, family: str, seed: int, level: Realism = Realism()) -> _Subject:
        """The same person (same hidden affect) whose affect shows in ``family``'s components.

        The family (:mod:`models.brain.families`) turns the subject's draws into the
        weights of the valence-carrying components; a family with an individual layout
        also takes the drawn LPP topography and latencies and frontal alpha sources and
        window. The realism ``level`` (:mod:`models.brain.realism`) then scales every
        family's affective modulations alike. The hidden affect, visual ERPs, latencies
        and gains of the standard draw stay as they are.
        """
        fam = family_class(family)
        draws, layout = self._family_draws(seed)
        c = fam.carriers(draws)
        return dataclasses.replace(
            self,
            family=family,
            faa=c.faa * c.gain * level.faa_gain,
            lpp_valence=c.lpp_valence * c.gain,
            frontal_valence=c.frontal_valence,
            lpp_arousal=self.lpp_arousal * c.gain,
            epn_arousal=self.epn_arousal * c.gain,
            erd_arousal=0.35 * c.gain,
            expression=level.affect_gain,
            **(layout if fam.individual_layout else {}),
        )

    def expressed(self, valence: float, arousal: float) -> tuple[float, float]:
        """The valence and arousal an image's ERPs and posterior alpha express.

        The hidden affect drawn towards that of the subject's average image (valence 0,
        arousal ``sigmoid(arousal_bias)``) by the realism's ``affect_gain``
        (:attr:`expression`): the grand averages keep their size, the differences
        between images shrink. At 1 (clean) the hidden affect itself.
        """
        if self.expression == 1.0:
            return valence, arousal
        centre = float(_sigmoid(self.arousal_bias))
        return self.expression * valence, centre + self.expression * (arousal - centre)

    def _family_draws(self, seed: int) -> tuple[FamilyDraws, dict[str, Any]]:
        """What every subject draws for the families, and its individual layout.

        From their own random stream of ``seed``, every draw made whatever the family, in
        one order, so one seed has the same LPP topography, frontal alpha sources and
        weights in every family that uses them.
        """
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
        # LPP: centro-parietal, maximum within ~15 degrees of Pz; onset 300-450 ms,
        # offset 750-1050 ms; the sign of its valence weight is the subject's own
        pz = channel_positions(["Pz"])[0]
        lpp_centre = pz + rng.normal(0.0, 0.12, 3)
        lpp_centre /= np.linalg.norm(lpp_centre)
        lpp = _COMPONENTS[_IDX["LPP"]]
        lpp = dataclasses.replace(
            lpp,
            centre_xyz=tuple(float(x) for x in lpp_centre),
            width=float(rng.uniform(0.45, 0.7)),
            start=float(rng.uniform(0.30, 0.45)),
            end=float(rng.uniform(0.75, 1.05)),
        )
        lpp_sign = float(rng.choice([-1.0, 1.0]))
        lpp_size = float(rng.uniform(*_FAMILY_LPP_VALENCE))
        # frontal alpha: each hemisphere's source moved on its own, its window shifted
        centres = []
        for i, (x, y, z) in enumerate(FRONTAL_ALPHA_CENTRES):
            c = np.array([x, y, z]) + rng.normal(0.0, 0.1, 3)
            c[0] = min(c[0], -0.2) if i == 0 else max(c[0], 0.2)  # stays in its hemisphere
            centres.append(tuple(float(v) for v in c / np.linalg.norm(c)))
        frontal_width = float(rng.uniform(0.32, 0.5))
        on, off = float(rng.uniform(0.22, 0.40)), float(rng.uniform(0.9, 1.25))
        faa_size = float(np.clip(rng.lognormal(np.log(_FAMILY_FAA), 0.2), 0.7, 1.8))
        share = float(rng.uniform(0.25, 0.75))
        weak = float(rng.uniform(*_WEAK_GAIN))
        components = list(_COMPONENTS)
        components[_IDX["LPP"]] = lpp
        draws = FamilyDraws(
            standard=AffectCarriers(self.faa, self.lpp_valence, self.frontal_valence),
            faa=faa_size,
            lpp_valence=lpp_sign * lpp_size,
            share=share,
            weak_gain=weak,
        )
        layout = {
            "components": tuple(components),
            "alpha_windows": (_ALPHA_WINDOWS[0], (on, off), (on, off)),
            "frontal_alpha_centres": tuple(centres),
            "frontal_alpha_width": frontal_width,
        }
        return draws, layout

    def _raw_affect(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unscaled valence and arousal drives of feature vectors (..., n_features)."""
        z = standardise(raw)
        chroma = np.stack([z[..., _F["red_green"]], z[..., _F["yellow_blue"]]], -1)
        hue = self.hue_strength * (
            chroma @ np.array([np.cos(self.hue_angle), np.sin(self.hue_angle)])
        )
        complexity = -0.15 * (z[..., _F["edge_density"]] - self.complexity_peak) ** 2
        conjunctions = np.einsum("...i,ij,...j->...", z, self.valence_pairs, z)
        return z @ self.valence_w + hue + complexity + conjunctions, z @ self.arousal_w

    def affect(self, raw: np.ndarray) -> tuple[float, float]:
        v, a = self._raw_affect(raw)
        (v_mu, v_sd), (a_mu, a_sd) = self.affect_norm
        valence = np.tanh(0.8 * (v - v_mu) / v_sd)
        arousal = _sigmoid(1.2 * (a - a_mu) / a_sd + self.arousal_bias)
        return float(valence), float(arousal)


# -- the response as a function of features -------------------------------------------------
def _component_gains(raw: np.ndarray, valence: float, arousal: float, s: _Subject) -> np.ndarray:
    """Gain of each component for one image's raw features and hidden affect."""
    valence, arousal = s.expressed(valence, arousal)
    z = standardise(raw)
    contrast = max(raw[_F["contrast"]], 0.0)
    cg = contrast**2 / (contrast**2 + 0.15**2) / (0.2**2 / (0.2**2 + 0.15**2))
    lr = float(np.clip(raw[_F["left_right"]], -0.5, 0.5))
    lu = raw[_F["lower_upper"]]
    texture = _sigmoid(z[_F["edge_density"]] + 0.5 * z[_F["high_freq"]])
    g = np.empty(_N_COMP)
    g[_IDX["C1"]] = cg * np.clip(3.0 * lu + 0.3, -1.5, 1.5)
    g[_IDX["P1-left"]] = cg * max(0.0, 1.0 - 1.5 * lr)
    g[_IDX["P1-right"]] = cg * max(0.0, 1.0 + 1.5 * lr)
    g[_IDX["chromatic"]] = np.clip(raw[_F["colourfulness"]] / 0.25, 0.0, 2.5)
    g[_IDX["N1-left"]] = (0.4 + 0.8 * texture) * (1.0 - 0.75 * lr)
    g[_IDX["N1-right"]] = (0.4 + 0.8 * texture) * (1.0 + 0.75 * lr)
    g[_IDX["P2"]] = 0.6 + 0.4 * _sigmoid(z[_F["brightness"]])
    g[_IDX["SPN"]] = np.clip((raw[_F["symmetry"]] - 0.2) / 0.6, 0.0, 1.2)
    g[_IDX["EPN-left"]] = g[_IDX["EPN-right"]] = s.epn_arousal * arousal
    g[_IDX["LPP"]] = 0.3 + s.lpp_arousal * arousal + s.lpp_valence * valence
    g[_IDX["FSW-left"]] = s.frontal_valence * valence
    g[_IDX["FSW-right"]] = -s.frontal_valence * valence
    return g * s.gain


def _alpha_changes(valence: float, arousal: float, s: _Subject) -> np.ndarray:
    """Relative change of (posterior, left frontal, right frontal) alpha amplitude.

    The posterior desynchronisation follows the expressed arousal; the frontal asymmetry
    follows the hidden valence at its own weight (``faa``, the realism's ``faa_gain``
    applied).
    """
    expressed = s.expressed(valence, arousal)[1]
    return np.array(
        [
            -(0.25 + s.erd_arousal * expressed) * s.erd,
            -0.3 * valence * s.faa,
            0.3 * valence * s.faa,
        ]
    )


def _time_courses(
    t: np.ndarray, s: _Subject, raw: np.ndarray, latency_jitter: float = 0.0
) -> np.ndarray:
    """(n_components, n_times) unit time courses at times ``t`` (s from display onset)."""
    z_contrast = standardise(raw)[_F["contrast"]]
    out = np.empty((_N_COMP, t.size))
    for i, c in enumerate(s.components):
        shift = s.latency_shift[i] + latency_jitter
        if c.name.startswith("P1"):
            shift -= 0.008 * np.tanh(z_contrast)  # high contrast: earlier P1
        if c.sustained:
            tt = t - shift
            out[i] = _sigmoid((tt - c.start) / _SUSTAIN_RISE_S) * _sigmoid(
                (c.end - tt) / _SUSTAIN_FALL_S
            )
        else:
            out[i] = np.exp(-0.5 * ((t - c.start - shift) / c.end) ** 2)
    out[:, t < 0] = 0.0
    return out


def _alpha_courses(
    t: np.ndarray, latency_jitter: float = 0.0, windows: Sequence[tuple[float, float]] = ()
) -> np.ndarray:
    tt = t - latency_jitter
    out = np.stack(
        [
            _sigmoid((tt - on) / _SUSTAIN_RISE_S) * _sigmoid((off - tt) / _SUSTAIN_FALL_S)
            for on, off in (windows or _ALPHA_WINDOWS)
        ]
    )
    out[:, t < 0] = 0.0
    return out


def _random_features(rng: np.random.Generator, n: int) -> np.ndarray:
    """Plausible feature vectors around :data:`FEATURE_NORMS` (for normalisation)."""
    centre = np.array([FEATURE_NORMS[f][0] for f in FEATURES])
    scale = np.array([FEATURE_NORMS[f][1] for f in FEATURES])
    raw = centre + scale * rng.standard_normal((n, len(FEATURES)))
    lo = np.array([0, 0, 0, 0, -1, -1, 0, 0, -1, 0, -1, -1], dtype=float)
    hi = np.array([1, 0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], dtype=float)
    return np.clip(raw, lo, hi)


# -- the model -----------------------------------------------------------------------------
@dataclass
class Stimulus:
    """One scheduled response of a :class:`StreamSimulator`."""

    first: int  # first sample the response touches
    evoked: np.ndarray  # (n_ch, n) µV, from `first`
    alpha: np.ndarray | None  # (3, n) relative alpha change, from `first`
    display_onset_s: float
    lost_samples: int = 0  # samples of the response that had already been rendered


@dataclass
class _Light:
    """The photodiode patch is lit from sample ``start`` to ``end`` (excluded)."""

    start: int
    end: int


class BrainModel:
    """One simulated subject: hidden affect, stimulus-locked responses, background EEG.

    Parameters
    ----------
    subject_seed : int
        Draws the subject's hidden weights, ERP latencies and gains, alpha frequency
        and source layout. Two seeds are two different people.
    sfreq : float
        Sampling rate in Hz.
    ch_names : list of str | None
        10-05 channel names; ``None`` gives :data:`STANDARD_64`.
    snr : float
        RMS of the response for an average image over RMS of the background (both over
        the 64-channel montage and 0-1 s).
    response_uv : float
        RMS of the response for an average image (µV).
    aperiodic_exponent : float
        Slope beta of the 1/f^beta background power spectrum, in (0, 2].
    alpha_hz : float
        Population mean of the individual alpha frequency.
    alpha_share : float
        Share of the background variance in the alpha rhythm.
    line_noise_hz, line_noise_uv : float
        Mains frequency and mean amplitude of line noise (0 = none).
    blinks_per_min, blink_uv : float
        Blink rate (0 = none) and mean blink amplitude at Fp1/Fp2.
    trial_amplitude_sd : float
        Trial-to-trial relative amplitude variability of each component.
    trial_latency_sd_ms : float
        Trial-to-trial latency variability of the whole response.
    display_lag_ms, display_jitter_ms : float
        The display shows the image this long (mean, sd) after the onset marker;
        the response and the photodiode follow the display, not the marker.
    learned : LearnedResponse | None
        A learned image-to-EEG model whose output replaces the parametric response.
    family : str
        Which components carry the subject's affect: a registered family of
        :mod:`models.brain.families` (see the module docstring). The hidden affect is
        the same in every family. With a ``learned`` model only the induced alpha
        changes follow the family.
    realism : Realism | str
        How much of the hidden affect a single trial carries: a preset of
        :mod:`models.brain.realism` by name (``"lab"``, the real recordings' range;
        ``"clean"``, the model before its calibration) or its own numbers.
    """

    def __init__(
        self,
        subject_seed: int,
        sfreq: float = 250.0,
        ch_names: list[str] | None = None,
        snr: float = DEFAULT_SNR,
        *,
        response_uv: float = DEFAULT_RESPONSE_UV,
        aperiodic_exponent: float = 1.5,
        alpha_hz: float = 10.0,
        alpha_share: float = 0.3,
        line_noise_hz: float = 50.0,
        line_noise_uv: float = 0.0,
        blinks_per_min: float = 0.0,
        blink_uv: float = 100.0,
        trial_amplitude_sd: float = 0.2,
        trial_latency_sd_ms: float = 10.0,
        display_lag_ms: float = 0.0,
        display_jitter_ms: float = 0.0,
        learned: LearnedResponse | None = None,
        family: str = "standard",
        realism: Realism | str = "lab",
    ) -> None:
        if sfreq <= 0:
            raise ValueError(f"sfreq must be positive, got {sfreq}")
        if snr <= 0 or response_uv <= 0:
            raise ValueError(f"snr and response_uv must be positive, got {snr}, {response_uv}")
        if not 0 <= alpha_share < 0.95:
            raise ValueError(f"alpha_share must be in [0, 0.95), got {alpha_share}")
        self.subject_seed = int(subject_seed)
        self.sfreq = float(sfreq)
        self.ch_names = list(STANDARD_64 if ch_names is None else ch_names)
        if len(set(self.ch_names)) != len(self.ch_names) or not self.ch_names:
            raise ValueError(f"channel names must be unique and non-empty: {self.ch_names}")
        if PHOTODIODE in self.ch_names:
            raise ValueError(f"'{PHOTODIODE}' is the photodiode channel, not an EEG channel")
        self.snr = float(snr)
        self.response_uv = float(response_uv)
        self.trial_amplitude_sd = float(trial_amplitude_sd)
        self.trial_latency_sd = float(trial_latency_sd_ms) / 1e3
        self.display_lag = float(display_lag_ms) / 1e3
        self.display_jitter = float(display_jitter_ms) / 1e3
        self.learned = learned
        if learned is not None:
            learned.check_channels(self.ch_names)
        self.realism = _realism(realism) if isinstance(realism, str) else realism
        standard = _Subject.draw(self.subject_seed, alpha_hz)
        self._subject = standard.for_family(family, self.subject_seed, self.realism)
        self.family = self._subject.family
        pos = channel_positions(self.ch_names)
        ref = channel_positions(STANDARD_64)
        # (n_ch, n_comp), µV per unit gain
        self._patterns = self._make_patterns(pos, ref, self._subject.components)
        # scaled on the standard family's response of the same seed: the visual ERPs
        # are the same µV in every family, whatever the affective components add
        self._scale = self.response_uv / self._reference_rms(ref, standard)
        self._background = BackgroundSpec(
            sfreq=self.sfreq,
            pos=pos,
            ref_pos=ref,
            fp_pos=channel_positions(["Fp1", "Fp2"]),
            rms_uv=self.response_uv / self.snr,
            exponent=float(aperiodic_exponent),
            alpha_hz=self._subject.alpha_hz,
            alpha_share=float(alpha_share),
            line_hz=float(line_noise_hz),
            line_uv=float(line_noise_uv),
            blinks_per_min=float(blinks_per_min),
            blink_uv=float(blink_uv),
            frontal_alpha_centres=self._subject.frontal_alpha_centres,
            frontal_alpha_width=self._subject.frontal_alpha_width,
        )
        self._cache: OrderedDict[Any, Any] = OrderedDict()

    @property
    def background_rms_uv(self) -> float:
        """RMS of the background EEG over the 64-channel montage (µV)."""
        return self._background.rms_uv

    # -- patterns and normalisation ------------------------------------------------------
    @staticmethod
    def _make_patterns(
        pos: np.ndarray, ref: np.ndarray, components: Sequence[_Component] = _COMPONENTS
    ) -> np.ndarray:
        cols = []
        for c in components:
            centre = c.centre_position()
            offset = sphere_gaussian(ref, centre, c.width).mean()  # average reference
            cols.append(c.peak_uv * (sphere_gaussian(pos, centre, c.width) - offset))
        return np.stack(cols, 1)

    def _reference_rms(self, ref: np.ndarray, subject: _Subject) -> float:
        t = np.arange(int(_REF_SFREQ)) / _REF_SFREQ  # 0-1 s
        patterns = self._make_patterns(ref, ref, subject.components)
        rng = np.random.default_rng(12345)
        ms = []
        for raw in _random_features(rng, _N_REF_IMAGES):
            v, a = subject.affect(raw)
            resp = patterns @ (_component_gains(raw, v, a, subject)[:, None]
                               * _time_courses(t, subject, raw))  # fmt: skip
            ms.append(np.mean(resp**2))
        return float(np.sqrt(np.mean(ms)))

    # -- per image ------------------------------------------------------------------------
    def _cached(self, kind: str, image: ImageLike, compute) -> Any:
        key = None
        if isinstance(image, str | Path):
            try:
                st = Path(image).stat()
                key = (kind, str(Path(image).resolve()), st.st_mtime_ns, st.st_size)
            except OSError:
                key = None
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = compute(image)
        if key is not None:
            self._cache[key] = value
            if len(self._cache) > 4096:
                self._cache.popitem(last=False)
        return value

    def clear_cache(self) -> None:
        """Forget the features (and learned responses) of images read from files."""
        self._cache.clear()

    def features(self, image: ImageLike) -> np.ndarray:
        """The pixel features the subject reacts to (see :mod:`models.brain.features`)."""
        return self._cached("features", image, image_features)

    def affect(self, image: ImageLike) -> tuple[float, float]:
        """ORACLE: the hidden (valence, arousal) of ``image`` for this subject.

        For evaluation only: nothing in the closed loop may call it. Valence is in
        (-1, 1) (unpleasant to pleasant), arousal in (0, 1) (calm to exciting).
        """
        return self._subject.affect(self.features(image))

    def _parametric(
        self,
        raw: np.ndarray,
        t: np.ndarray,
        amp: np.ndarray | None,
        lat: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        v, a = self._subject.affect(raw)
        gains = _component_gains(raw, v, a, self._subject)
        if amp is not None:
            gains = gains * amp
        courses = _time_courses(t, self._subject, raw, lat)
        evoked = self._patterns @ (gains[:, None] * courses) * self._scale
        alpha = _alpha_changes(v, a, self._subject)[:, None] * _alpha_courses(
            t, lat, self._subject.alpha_windows
        )
        return evoked, alpha

    def _learned_evoked(self, image: ImageLike) -> np.ndarray:
        def compute(img: ImageLike) -> np.ndarray:
            return self.learned.response(load_image(img), self.ch_names, self.sfreq)

        return self._cached("learned", image, compute)

    def evoked(self, image: ImageLike) -> np.ndarray:
        """Noise-free phase-locked response to ``image``, (n_channels, n_times) in µV.

        Sample 0 is the display onset; the response lasts 1.5 s (the LPP has decayed).
        Induced alpha changes are not phase-locked and are not included.
        """
        if self.learned is not None:
            return self._learned_evoked(image).copy()
        t = np.arange(int(round(_RESPONSE_S * self.sfreq))) / self.sfreq
        return self._parametric(self.features(image), t, None, 0.0)[0]

    # -- simulation -----------------------------------------------------------------------
    def stream(
        self,
        seed: int | None = None,
        *,
        photodiode: bool = False,
        photodiode_duration_s: float = 1.0,
        photodiode_level: float = 1.0,
    ) -> StreamSimulator:
        """A running simulation (background + responses), rendered chunk by chunk."""
        return StreamSimulator(
            self,
            seed,
            photodiode=photodiode,
            photodiode_duration_s=photodiode_duration_s,
            photodiode_level=photodiode_level,
        )

    def simulate_epochs(
        self,
        images: Sequence[ImageLike],
        tmin: float = -0.2,
        tmax: float = 1.0,
        seed: int = 0,
        *,
        isi_s: float | None = None,
    ) -> np.ndarray:
        """Epochs (n_images, n_channels, n_times) in µV around each image's onset marker.

        The images are shown one after another, ``isi_s`` apart (default: the epoch
        length + 0.3 s), in one continuous simulated stream rendered by the same
        :class:`StreamSimulator` as the live stream; epochs are cut at the marker
        sample like ``eegs acquire`` does (both ends included), without filtering or
        baseline correction. The same ``seed`` gives the same background whatever
        the images.
        """
        if tmax <= tmin:
            raise ValueError(f"tmax ({tmax}) must be greater than tmin ({tmin})")
        fs = self.sfreq
        isi = (tmax - tmin + 0.3) if isi_s is None else float(isi_s)
        lo, hi = int(round(tmin * fs)), int(round(tmax * fs))
        first_onset = max(0, -lo) + int(fs)  # one second of lead-in
        onsets = first_onset + np.round(np.arange(len(images)) * isi * fs).astype(int)
        sim = self.stream(seed)
        out = np.empty((len(images), len(self.ch_names), hi - lo + 1))
        if not len(images):
            return out
        chunk = max(1, int(fs))  # the chunk size does not change the signal
        parts: list[np.ndarray] = []
        parts_first = 0  # sample index of parts[0][:, 0]
        cut = 0  # epochs cut so far

        def advance(to: int) -> None:
            while sim.next_sample < to:
                parts.append(sim.render(min(chunk, to - sim.next_sample)))

        def cut_ready() -> None:
            nonlocal cut, parts, parts_first
            if cut == len(onsets) or onsets[cut] + hi + 1 > sim.next_sample:
                return
            data = np.concatenate(parts, axis=1)
            while cut < len(onsets) and onsets[cut] + hi + 1 <= sim.next_sample:
                start = onsets[cut] + lo - parts_first
                out[cut] = data[:, start : start + hi - lo + 1]
                cut += 1
            keep = onsets[cut] + lo if cut < len(onsets) else sim.next_sample
            keep = min(keep, sim.next_sample)
            parts, parts_first = [data[:, keep - parts_first :]], keep

        for image, onset in zip(images, onsets, strict=True):
            advance(onset)  # a marker arrives before its onset sample is rendered
            sim.onset(image, onset / fs)
            cut_ready()
        advance(onsets[-1] + hi + 1)
        cut_ready()
        return out


class StreamSimulator:
    """Background EEG plus the responses to the stimuli scheduled so far.

    Time ``t`` (seconds) is measured on the sample clock: sample ``k`` is at ``k /
    sfreq``. Samples are rendered in order and never change once rendered, so a
    stimulus whose onset has already been rendered adds its response from the next
    sample on (its start is lost, as on a real amplifier that has already sent it).

    Parameters
    ----------
    model : BrainModel
        The subject.
    seed : int | None
        Seed of the background, trial variability and display jitter (``None``: fresh).
    photodiode : bool
        Add a photodiode channel (:data:`PHOTODIODE`) after the EEG channels.
    photodiode_duration_s : float
        How long the photodiode stays on when no offset marker ends the stimulus.
    photodiode_level : float
        Photodiode value while the stimulus is on (0 otherwise).
    """

    def __init__(
        self,
        model: BrainModel,
        seed: int | None = None,
        *,
        photodiode: bool = False,
        photodiode_duration_s: float = 1.0,
        photodiode_level: float = 1.0,
    ) -> None:
        self.model = model
        ss = np.random.SeedSequence(seed)
        noise, trials, display = ss.spawn(3)
        layout = np.random.default_rng(np.random.SeedSequence([model.subject_seed, 1]))
        self.background = BackgroundEEG(model._background, layout, np.random.default_rng(noise))
        self._trial_rng = np.random.default_rng(trials)
        self._display_rng = np.random.default_rng(display)
        self.photodiode = photodiode
        self.photodiode_duration_s = float(photodiode_duration_s)
        self.photodiode_level = float(photodiode_level)
        self.ch_names = model.ch_names + ([PHOTODIODE] if photodiode else [])
        self.ch_types = ["EEG"] * len(model.ch_names) + (["MISC"] if photodiode else [])
        self.stimuli: list[Stimulus] = []
        self.lights: list[_Light] = []
        self.next_sample = 0
        self._resp_n = int(round(_RESPONSE_S * model.sfreq))

    @property
    def sfreq(self) -> float:
        """Sampling rate (Hz)."""
        return self.model.sfreq

    def _display_delay(self) -> float:
        jitter = self.model.display_jitter
        return self.model.display_lag + (self._display_rng.normal(0, jitter) if jitter else 0.0)

    def _sample_at(self, t: float) -> int:
        return int(np.ceil(t * self.sfreq - 1e-9))

    def onset(self, image: ImageLike | None, t: float) -> Stimulus | None:
        """An onset marker at ``t`` seconds: light the photodiode, schedule the response.

        ``image`` ``None`` (a marker that names no image) lights the photodiode only.

        Raises
        ------
        ImageError
            If the image cannot be read: no response is scheduled (the photodiode,
            which sees the display, still steps).
        """
        m, fs = self.model, self.model.sfreq
        display = t + self._display_delay()
        lit = self._sample_at(display)
        light = _Light(
            max(lit, self.next_sample), lit + int(round(self.photodiode_duration_s * fs))
        )
        if self.lights and self.lights[-1].end > light.start:
            self.lights[-1].end = light.start  # a new image replaces the old one
        self.lights.append(light)
        amp = 1.0 + m.trial_amplitude_sd * self._trial_rng.standard_normal(_N_COMP)
        lat = m.trial_latency_sd * self._trial_rng.standard_normal()
        if image is None:
            return None
        if m.learned is not None:
            evoked = m._learned_evoked(image) * float(np.mean(amp))
            start = int(round(display * fs))
            alpha = None
        else:
            raw = m.features(image)
            start = self._sample_at(display)
            t_rel = (start + np.arange(self._resp_n)) / fs - display
            evoked, alpha = m._parametric(raw, t_rel, amp, lat)
        skip = max(0, self.next_sample - start)
        stim = Stimulus(
            first=start + skip,
            evoked=evoked[:, skip:],
            alpha=None if alpha is None else alpha[:, skip:],
            display_onset_s=display,
            lost_samples=skip,
        )
        self.stimuli.append(stim)
        return stim

    def offset(self, t: float) -> None:
        """An offset marker at ``t`` seconds: the photodiode goes dark (after the lag).

        Samples already rendered do not change: an offset later than the default
        duration that has already been rendered dark is ignored.
        """
        end = max(self._sample_at(t + self._display_delay()), self.next_sample)
        for light in reversed(self.lights):
            if light.start <= end:
                if light.end > self.next_sample:  # still lit: move its end
                    light.end = end
                return

    def render(self, n: int) -> np.ndarray:
        """The next ``n`` samples: (n_channels (+ photodiode), n), EEG in µV."""
        first, last = self.next_sample, self.next_sample + n
        gain = None
        active = [s for s in self.stimuli if s.first < last]
        for s in active:
            if s.alpha is None:
                continue
            lo, hi = max(first, s.first), min(last, s.first + s.alpha.shape[1])
            if hi > lo:
                if gain is None:
                    gain = np.ones((BackgroundEEG.n_alpha, n))
                gain[:, lo - first : hi - first] += s.alpha[:, lo - s.first : hi - s.first]
        eeg = self.background.render(n, gain)
        for s in active:
            lo, hi = max(first, s.first), min(last, s.first + s.evoked.shape[1])
            if hi > lo:
                eeg[:, lo - first : hi - first] += s.evoked[:, lo - s.first : hi - s.first]
        if self.photodiode:
            pd = np.zeros((1, n))
            for light in self.lights:
                lo, hi = max(first, light.start), min(last, light.end)
                if hi > lo:
                    pd[0, lo - first : hi - first] = self.photodiode_level
            eeg = np.vstack([eeg, pd])
        self.next_sample = last
        self.stimuli = [s for s in self.stimuli if s.first + s.evoked.shape[1] > last]
        self.lights = [x for x in self.lights if x.end > last or x is self.lights[-1]]
        return eeg
