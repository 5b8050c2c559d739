"""The simulated participant's self-report: hidden affect to a rating scale, like a person.

The brain model (:mod:`models.brain.response`) knows each image's hidden valence in
(-1, 1) and arousal in (0, 1); a participant who is asked reports them on a scale (the
Self-Assessment Manikin, 1-9 by default; Bradley & Lang 1994) imperfectly, and each
in their own way. :class:`RatingModel` is that report, pure computation: the
presentation's rating screen, the bench of the closed loop and the tests call it with
the hidden affect of the image just shown and a random generator of their own.

What makes a rating differ from the hidden affect, per subject (drawn from the subject
seed, so one seed is one person in the EEG and in the ratings):

- response noise: the same image is not rated the same twice. Gaussian, its SD 16-26 % of the
  scale's range per scale, so that ratings correlate about 0.65-0.9 with the hidden
  affect of procedural images;
- scale-use bias: people differ in where they put the middle (an offset, SD 7 % of the
  range) and in how much of the scale they use (extreme vs. midpoint response
  styles): an extremity factor, log-normal around 1, that stretches the hidden
  value in logit space (> 1 uses the ends, < 1 stays near the middle);
- rounding to the scale's integer points and clipping at its ends (floor and ceiling);
- a response delay from the question's appearance to the press: log-normal around the
  subject's median (0.8-1.5 s, log-SD 0.2-0.4), 20 % slower for answers near the middle
  of the scale (ambivalent judgements take longer), never under 0.25 s.

Valence and arousal are reported independently (no halo between the two scales), a
documented simplification. Nothing here reads the EEG or the subject family: the same
seed reports the same way whatever carries its affect in the EEG.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RatingModel"]

#: Spawn key of the rating draws beside the brain model's own ([seed, 0..2]).
_STREAM = 3
_MIN_DELAY_S = 0.25
_AMBIVALENCE_SLOWING = 0.2
_EPS = 1e-3  # hidden values are clipped this far inside (0, 1) before the logit


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p / (1.0 - p))


@dataclass(frozen=True)
class RatingModel:
    """How one simulated subject turns hidden valence and arousal into ratings.

    Per-scale tuples are (valence, arousal). Offsets and noise are fractions of the
    scale's range (``high - low``), so the same subject behaves alike on any scale.

    Parameters
    ----------
    subject_seed : int
        The subject (as in :class:`models.brain.response.BrainModel`).
    noise_sd : tuple of float
        SD of the response noise per scale, fraction of the range.
    offset : tuple of float
        Scale-use offset per scale, fraction of the range (+: rates higher).
    extremity : tuple of float
        Stretch of the hidden value in logit space per scale (> 1: uses the ends).
    delay_median_s : float
        Median response delay for a clear-cut answer (s).
    delay_sigma : float
        Log-SD of the response delay.
    """

    subject_seed: int
    noise_sd: tuple[float, float]
    offset: tuple[float, float]
    extremity: tuple[float, float]
    delay_median_s: float
    delay_sigma: float

    @classmethod
    def draw(cls, subject_seed: int) -> RatingModel:
        """The rating behaviour of subject ``subject_seed`` (deterministic per seed).

        Drawn from the seed's own random stream, so it neither changes nor depends on
        the brain model's draws of the same seed.
        """
        rng = np.random.default_rng(np.random.SeedSequence([int(subject_seed), _STREAM]))
        noise = rng.uniform(0.16, 0.26, 2)
        offset = rng.normal(0.0, 0.07, 2)
        extremity = np.clip(rng.lognormal(0.0, 0.3, 2), 0.5, 2.0)
        return cls(
            subject_seed=int(subject_seed),
            noise_sd=(float(noise[0]), float(noise[1])),
            offset=(float(offset[0]), float(offset[1])),
            extremity=(float(extremity[0]), float(extremity[1])),
            delay_median_s=float(rng.uniform(0.8, 1.5)),
            delay_sigma=float(rng.uniform(0.2, 0.4)),
        )

    def rate(
        self,
        valence: float,
        arousal: float,
        low: int = 1,
        high: int = 9,
        rng: np.random.Generator | int | None = None,
    ) -> tuple[int, int, tuple[float, float]]:
        """One image's ratings: (valence point, arousal point, (valence delay, arousal delay)).

        Parameters
        ----------
        valence, arousal : float
            The hidden affect as :meth:`BrainModel.affect` returns it: valence in
            [-1, 1], arousal in [0, 1].
        low, high : int
            The scale's end points (``low < high``); points are whole numbers in between.
        rng : numpy.random.Generator | int | None
            Source of the trial's noise and delays: the same generator state gives the
            same answer (an int seeds one; ``None`` draws fresh entropy).

        Raises
        ------
        ValueError
            If the scale is empty or the affect is outside its range.
        """
        v, a, delays = self.rate_many([valence], [arousal], low, high, rng)
        return int(v[0]), int(a[0]), (float(delays[0, 0]), float(delays[0, 1]))

    def rate_many(
        self,
        valence: np.ndarray | list[float],
        arousal: np.ndarray | list[float],
        low: int = 1,
        high: int = 9,
        rng: np.random.Generator | int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ratings of many images at once: points (n,), (n,) int and delays (n, 2) in s.

        The same draws, in the same order, as :meth:`rate` called once per image with
        one generator, so a batch and a loop give the same answers.
        """
        if isinstance(low, bool) or isinstance(high, bool) or int(low) != low or int(high) != high:
            raise ValueError(f"scale end points must be integers, got {low!r} and {high!r}")
        low, high = int(low), int(high)
        if high <= low:
            raise ValueError(f"the scale needs low < high, got {low} and {high}")
        v = np.atleast_1d(np.asarray(valence, dtype=float))
        a = np.atleast_1d(np.asarray(arousal, dtype=float))
        if v.shape != a.shape or v.ndim != 1:
            raise ValueError(f"valence and arousal must be equal 1-d arrays: {v.shape}, {a.shape}")
        if not (np.all(np.isfinite(v)) and np.all(np.abs(v) <= 1.0)):
            raise ValueError("valence must be in [-1, 1] (BrainModel.affect's range)")
        if not (np.all(np.isfinite(a)) and np.all((a >= 0.0) & (a <= 1.0))):
            raise ValueError("arousal must be in [0, 1] (BrainModel.affect's range)")
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        n = v.size
        # one row of draws per image (noise, then delay jitter, valence then arousal):
        # a batch draws the same numbers as one call per image
        draws = gen.standard_normal((n, 4))
        noise, jitter = draws[:, :2], draws[:, 2:]
        hidden = np.stack([(v + 1.0) / 2.0, a], axis=1)  # both on (0, 1)
        extremity = np.asarray(self.extremity)
        felt = 1.0 / (1.0 + np.exp(-extremity * _logit(hidden)))
        reported = felt + np.asarray(self.offset) + np.asarray(self.noise_sd) * noise
        span = high - low
        points = np.clip(np.rint(low + span * reported), low, high).astype(int)
        # answers near the middle of the scale are slower (ambivalence)
        middle = 1.0 - np.abs(2.0 * (points - low) / span - 1.0)
        delays = self.delay_median_s * np.exp(self.delay_sigma * jitter)
        delays = np.maximum(delays * (1.0 + _AMBIVALENCE_SLOWING * middle), _MIN_DELAY_S)
        return points[:, 0], points[:, 1], delays
