"""The personal reward: a pseudo reward estimator fitted on the participant's own ratings.

The poster's premise is that normative affective labels fail to match an individual
brain, so the reward that drives the loop is learnt per participant: each calibration
epoch (every channel) is mapped to the valence the participant rated for that image
(issue 14; ``generation.reward.mode = "personal"``; the worker's side is
:mod:`workers.generation.personal_fit`).

Features (:func:`epoch_features`), from each epoch alone:

- spectral: log10 band power per channel in theta (4-8 Hz), alpha (8-13 Hz) and beta
  (13-30 Hz) over the post-stimulus window 0.2-1.0 s (Welch, Hann windows of 0.5 s,
  half overlap). Differences of these logs are the frontal alpha asymmetry and its
  relatives, so the asymmetry index is one of the directions the model can learn;
- ERP: baseline-corrected (the pre-stimulus mean) mean amplitude per channel in
  100 ms bins over 0.1-0.9 s: early visual components, the frontal slow wave, the LPP.

- components: the few summaries that carry affect in the literature, each one number
  per epoch: the frontal alpha asymmetry (right minus left log alpha power, averaged
  over the homologous frontal pairs present), and the mean baseline-corrected amplitude
  of a centro-parietal (LPP) and a frontal (slow wave) region in 0.1-0.3, 0.3-0.6 and
  0.6-0.9 s. Seven numbers, where 48 trials can estimate a weight each; the full blocks
  above stay in, at half weight, for what a region average misses (a participant whose
  LPP peaks off Pz). On 35 simulated participants whose valence shows in the asymmetry,
  the LPP or both (48 rated trials each), this raised the out-of-fold r from 0.30 to 0.35
  on average, and in each of the three groups.

No ATM-S features: no pretrained ATM-S ships with the project, and a random encoder
only adds 1024 noise dimensions to 24-60 trials.

Model: every feature standardised on the training trials, then each block (components,
spectral, ERP) scaled by its weight / sqrt(its size) (weights 1, 0.5, 0.5), so each
block weighs by its weight, not by its size, in the penalty; ridge
regression with an intercept, solved in its dual (trials x trials) form, the penalty
chosen from a grid of 29 (relative to the mean eigenvalue of the trials' Gram matrix)
by exact leave-one-out error on the training trials (what ``sklearn.linear_model.
RidgeCV`` does), so 24-60 trials x 64 channels stay regularised.

Cross-validation inside the calibration block: k folds (``folds``, 5) stratified by
rating (each run of k consecutive ranks is spread over the k folds), every fold model
with its own standardisation and penalty; the out-of-fold predictions give Pearson r,
its 95 % confidence interval (Fisher z, n - 3 degrees of freedom) and a permutation
p-value: the ratings shuffled ``permutations`` times (200) and the same stratified CV
run on each, p = (1 + #{r_perm >= r}) / (1 + permutations).

Decision rule: the participant **decodes** when r > 0 and p < ``p_threshold`` (0.05).
Then the reward of an epoch is the predicted valence mapped from the rating scale
(low, high) to [0, 1] and clipped. The prediction is calibrated by the out-of-fold
slope (rating regressed on the out-of-fold prediction), so it estimates the rating
itself rather than the ridge's shrunk score: E[rating | prediction], spread about r x
the ratings' SD. An epoch the estimator was fitted on (recognised by its bytes) gets
its out-of-fold prediction, never the in-sample one, so calibration images can join
the generator's observations without their ratings leaking in.

Fallback: when the participant does not decode (or too few trials were rated, or the
ratings do not vary), the reward is the training-free frontal alpha asymmetry index
(:class:`models.rewards.asymmetry.AsymmetryReward`). The index is also scored against the same
ratings (:func:`index_agreement`: r and a permutation p): it fits nothing, so its r on
the calibration trials is as honest an estimate as the estimator's out-of-fold r, and
when it is the higher of the two the index drives the loop even though the estimator
decodes (48 trials estimate 700 weights less well than a fixed contrast where that
contrast is what carries the participant's valence). :class:`PersonalReward` holds that
choice and the record the session keeps (``personal_estimator`` in ``events.jsonl`` and
``summary.json``: decodes, the reward in use, cv r, CI, p, the index's r and p, n
trials, fallback).

Files (:meth:`PersonalEstimator.save`): arrays in safetensors, everything else in a
JSON sidecar; never pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.rewards.asymmetry import AsymmetryReward
from models.rewards.base import (
    EpochData,
    Reward,
    RewardError,
    RewardFunction,
    RewardMode,
    as_reward,
)

logger = logging.getLogger("eegs.personal_reward")

FORMAT = "eegs-personal-estimator/1"
BANDS_HZ: dict[str, tuple[float, float]] = {
    "theta": (4.0, 8.0),
    "alpha": (8.0, 13.0),
    "beta": (13.0, 30.0),
}
# (left, right) homologous pairs, the regions of the LPP and of the frontal slow wave
FAA_PAIRS: tuple[tuple[str, str], ...] = (
    ("Fp1", "Fp2"), ("AF7", "AF8"), ("AF3", "AF4"), ("F7", "F8"), ("F5", "F6"),
    ("F3", "F4"), ("F1", "F2"), ("FC5", "FC6"), ("FC3", "FC4"), ("FC1", "FC2"),
)  # fmt: skip
LPP_CHANNELS: tuple[str, ...] = ("Cz", "CPz", "CP1", "CP2", "Pz", "P1", "P2", "POz")
FRONTAL_CHANNELS: tuple[str, ...] = ("AFz", "Fz", "F1", "F2", "F3", "F4", "FCz")
_Z95 = 1.959963984540054
_N_ALPHAS = 29


class PersonalFitError(RewardError):
    """The calibration trials cannot fit an estimator (too few, constant ratings...)."""


@dataclass(frozen=True)
class FeatureSpec:
    """Which features one epoch gives (defaults: the module docstring)."""

    spectral_window_s: tuple[float, float] = (0.2, 1.0)
    welch_segment_s: float = 0.5
    bands_hz: tuple[tuple[str, float, float], ...] = tuple(
        (name, lo, hi) for name, (lo, hi) in BANDS_HZ.items()
    )
    erp_window_s: tuple[float, float] = (0.1, 0.9)
    erp_bin_s: float = 0.1
    faa_pairs: tuple[tuple[str, str], ...] = FAA_PAIRS
    lpp_channels: tuple[str, ...] = LPP_CHANNELS
    frontal_channels: tuple[str, ...] = FRONTAL_CHANNELS
    component_windows_s: tuple[tuple[float, float], ...] = ((0.1, 0.3), (0.3, 0.6), (0.6, 0.9))
    full_weight: float = 0.5  # weight of the spectral and ERP blocks beside the components

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeatureSpec:
        """Inverse of ``asdict``; a file from before the component block gets none."""
        components = "faa_pairs" in d
        return cls(
            spectral_window_s=tuple(d["spectral_window_s"]),
            welch_segment_s=float(d["welch_segment_s"]),
            bands_hz=tuple((str(n), float(lo), float(hi)) for n, lo, hi in d["bands_hz"]),
            erp_window_s=tuple(d["erp_window_s"]),
            erp_bin_s=float(d["erp_bin_s"]),
            faa_pairs=tuple((str(a), str(b)) for a, b in d.get("faa_pairs", [])),
            lpp_channels=tuple(str(c) for c in d.get("lpp_channels", [])),
            frontal_channels=tuple(str(c) for c in d.get("frontal_channels", [])),
            component_windows_s=tuple(
                (float(a), float(b)) for a, b in d.get("component_windows_s", [])
            ),
            full_weight=float(d.get("full_weight", 1.0)) if components else 1.0,
        )


@dataclass(frozen=True)
class _Layout:
    """Sample spans of the features for one epoch geometry (sfreq, tmin, n_times)."""

    baseline: slice | None
    spectral: slice
    nperseg: int
    erp_bins: tuple[slice, ...]
    erp_centres_s: tuple[float, ...]

    @classmethod
    def of(cls, spec: FeatureSpec, sfreq: float, tmin: float, n_times: int) -> _Layout:
        def sample(t: float) -> int:
            return int(round((t - tmin) * sfreq))

        t_end = tmin + n_times / sfreq
        lo, hi = spec.spectral_window_s
        s0, s1 = max(sample(lo), 0), min(sample(hi), n_times)
        if s1 - s0 < int(round(0.25 * sfreq)):
            raise RewardError(
                f"the epoch ({tmin:g} to {t_end:g} s) holds less than 0.25 s of the spectral "
                f"window {list(spec.spectral_window_s)} s"
            )
        nperseg = min(s1 - s0, int(round(spec.welch_segment_s * sfreq)))
        top = max(hi for _, _, hi in spec.bands_hz)
        if top >= sfreq / 2:
            raise RewardError(f"band up to {top:g} Hz is not below Nyquist ({sfreq / 2:g} Hz)")
        base = slice(0, sample(0.0)) if sample(0.0) > 0 else None
        lo, hi = spec.erp_window_s
        edges = np.arange(lo, hi + 1e-9, spec.erp_bin_s)
        bins, centres = [], []
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            i0, i1 = sample(a), sample(b)
            if i0 >= 0 and i1 <= n_times and i1 > i0:
                bins.append(slice(i0, i1))
                centres.append(float(a + b) / 2)
        if not bins:
            raise RewardError(f"the epoch holds none of the ERP window {list(spec.erp_window_s)}")
        return cls(base, slice(s0, s1), nperseg, tuple(bins), tuple(centres))


def epoch_features(
    data: np.ndarray, sfreq: float, tmin: float, spec: FeatureSpec = FeatureSpec()
) -> tuple[np.ndarray, np.ndarray]:
    """(spectral, ERP) features of epochs ``data`` (..., n_channels, n_times) in µV.

    Spectral: (..., n_channels * n_bands) log10 band powers, channel-major; ERP:
    (..., n_channels * n_bins) baseline-corrected bin means.
    """
    from scipy.signal import welch

    x = np.asarray(data, dtype=np.float64)
    lay = _Layout.of(spec, sfreq, tmin, x.shape[-1])
    seg = x[..., lay.spectral]
    freqs, psd = welch(
        seg, fs=sfreq, nperseg=lay.nperseg, noverlap=lay.nperseg // 2, detrend="constant", axis=-1
    )
    bands = []
    for _, lo, hi in spec.bands_hz:
        keep = (freqs >= lo) & (freqs < hi)
        if not keep.any():
            raise RewardError(f"no Welch frequency in the band {lo:g}-{hi:g} Hz")
        bands.append(np.log10(psd[..., keep].mean(-1) + 1e-12))
    spectral = np.stack(bands, axis=-1).reshape(*x.shape[:-2], -1)
    if lay.baseline is not None:
        x = x - x[..., lay.baseline].mean(-1, keepdims=True)
    erp = np.stack([x[..., b].mean(-1) for b in lay.erp_bins], axis=-1)
    return spectral, erp.reshape(*x.shape[:-2], -1)


def component_features(
    spectral: np.ndarray,
    erp: np.ndarray,
    ch_names: Sequence[str],
    sfreq: float,
    tmin: float,
    n_times: int,
    spec: FeatureSpec = FeatureSpec(),
) -> np.ndarray:
    """The component block (module docstring) from :func:`epoch_features`' two blocks.

    Columns: the frontal alpha asymmetry (when a pair and an ``alpha`` band exist), then
    per region (LPP, frontal) with a channel present, one mean per component window
    that holds an ERP bin. (..., 0) when nothing applies.
    """
    lay = _Layout.of(spec, sfreq, tmin, n_times)
    index = {ch.lower(): i for i, ch in enumerate(ch_names)}
    n_ch = len(ch_names)
    lead = spectral.shape[:-1]
    cols: list[np.ndarray] = []
    bands = [name for name, _, _ in spec.bands_hz]
    pairs = [
        (index[a.lower()], index[b.lower()])
        for a, b in spec.faa_pairs
        if a.lower() in index and b.lower() in index
    ]
    if pairs and "alpha" in bands:
        alpha = spectral.reshape(*lead, n_ch, len(bands))[..., bands.index("alpha")]
        cols.append(np.mean([alpha[..., r] - alpha[..., left] for left, r in pairs], axis=0))
    centres = np.asarray(lay.erp_centres_s)
    per_ch = erp.reshape(*lead, n_ch, len(centres))
    for region in (spec.lpp_channels, spec.frontal_channels):
        picks = [index[c.lower()] for c in region if c.lower() in index]
        if not picks:
            continue
        mean = per_ch[..., picks, :].mean(-2)
        for a, b in spec.component_windows_s:
            keep = (centres > a) & (centres < b)
            if keep.any():
                cols.append(mean[..., keep].mean(-1))
    if not cols:
        return np.zeros((*lead, 0))
    return np.stack(cols, axis=-1)


def design(
    data: np.ndarray,
    ch_names: Sequence[str],
    sfreq: float,
    tmin: float,
    spec: FeatureSpec = FeatureSpec(),
) -> tuple[np.ndarray, np.ndarray]:
    """Every feature of epochs ``data`` side by side, and the block weight of each column.

    A block of size m and weight w gets w / sqrt(m) per column, so that after
    standardisation it weighs w in the ridge penalty whatever its size.
    """
    spectral, erp = epoch_features(data, sfreq, tmin, spec)
    comp = component_features(spectral, erp, ch_names, sfreq, tmin, data.shape[-1], spec)
    blocks = [(comp, 1.0), (spectral, spec.full_weight), (erp, spec.full_weight)]
    blocks = [(b, wt) for b, wt in blocks if b.shape[-1]]
    X = np.concatenate([b for b, _ in blocks], axis=-1)
    w = np.concatenate([np.full(b.shape[-1], wt / np.sqrt(b.shape[-1])) for b, wt in blocks])
    return X, w


def _epoch_key(data: np.ndarray) -> str:
    """Identity of an epoch's samples (the fitted trials get their out-of-fold value)."""
    a = np.ascontiguousarray(data, dtype=np.float64)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


# -- ridge with a leave-one-out penalty -------------------------------------------------------
def _standardise(X: np.ndarray, block_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) such that (X - mean) / scale is z-scored and block-weighted."""
    mean = X.mean(0)
    sd = X.std(0)
    sd[sd < 1e-12] = np.inf  # a constant feature contributes nothing
    return mean, sd / block_w


def _ridge(Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Ridge on centred ``Z``: (coef, intercept, penalty chosen by exact LOO error)."""
    n = len(y)
    ym = float(y.mean())
    yc = y - ym
    K = Z @ Z.T
    lam, V = np.linalg.eigh(K)
    lam = np.clip(lam, 0.0, None)
    mean_eig = max(float(lam.sum()) / n, 1e-12)
    alphas = mean_eig * np.logspace(-3, 4, _N_ALPHAS)
    Vy = V.T @ yc
    shrink = lam[None, :] / (lam[None, :] + alphas[:, None])  # (A, n)
    fitted = (shrink * Vy[None, :]) @ V.T
    lev = 1.0 / n + shrink @ (V**2).T
    loo = (yc[None, :] - fitted) / np.maximum(1.0 - lev, 1e-9)
    best = int(np.argmin((loo**2).mean(1)))
    alpha = float(alphas[best])
    dual = V @ (Vy / (lam + alpha))
    return Z.T @ dual, ym, alpha


def _fit_predict(X: np.ndarray, block_w: np.ndarray, y: np.ndarray, train, test) -> np.ndarray:
    mean, scale = _standardise(X[train], block_w)
    coef, intercept, _ = _ridge((X[train] - mean) / scale, y[train])
    return intercept + ((X[test] - mean) / scale) @ coef


def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold of each trial as a fit seeded ``seed`` makes them (stratified by rating)."""
    return _stratified_folds(np.asarray(y, dtype=np.float64), k, np.random.default_rng(seed))


def _stratified_folds(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of each trial: each run of k consecutive rating ranks spread over the k folds."""
    n = len(y)
    order = np.lexsort((rng.random(n), y))  # ties in random order
    folds = np.empty(n, dtype=int)
    for start in range(0, n, k):
        chunk = order[start : start + k]
        folds[chunk] = rng.permutation(k)[: len(chunk)]
    return folds


def _oof(X: np.ndarray, block_w: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    pred = np.empty(len(y))
    for f in np.unique(folds):
        test = folds == f
        pred[test] = _fit_predict(X, block_w, y, ~test, test)
    return pred


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / den if den > 1e-12 else 0.0


def fisher_ci(r: float, n: int) -> tuple[float, float]:
    """95 % confidence interval of a Pearson r from n pairs (Fisher z)."""
    if n <= 3:
        return (-1.0, 1.0)
    z = np.arctanh(np.clip(r, -0.999999, 0.999999))
    half = _Z95 / np.sqrt(n - 3)
    return (float(np.tanh(z - half)), float(np.tanh(z + half)))


# -- the estimator --------------------------------------------------------------------------
@dataclass
class PersonalEstimator:
    """Epoch (all channels) -> the participant's rated valence; ``__call__`` is the reward.

    Build it with :func:`fit_personal`; ``cv`` holds the cross-validation inside the
    calibration block and ``decodes`` the decision rule's verdict.
    """

    ch_names: list[str]
    sfreq: float
    tmin: float
    n_times: int
    spec: FeatureSpec
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    ridge_alpha: float
    slope: float  # out-of-fold calibration: rating ~ intercept_cal + slope * prediction
    offset: float
    rating_scale: tuple[float, float]
    cv: dict[str, Any] = field(default_factory=dict)
    oof: dict[str, float] = field(default_factory=dict)  # epoch key -> out-of-fold rating
    # epoch key -> the uncalibrated out-of-fold output (not saved: the fit's own trials)
    cv_output: dict[str, float] = field(default_factory=dict, repr=False)

    def out_of_fold(self, epochs: Sequence[EpochData]) -> np.ndarray:
        """The out-of-fold output of each of the fitted epochs (before calibration)."""
        try:
            return np.asarray([self.cv_output[_epoch_key(e.data)] for e in epochs])
        except KeyError:
            raise RewardError("an epoch the estimator was not fitted on") from None

    @property
    def decodes(self) -> bool:
        """The decision rule: out-of-fold r > 0 and permutation p < the threshold."""
        return bool(self.cv.get("decodes", False))

    def _x(self, epoch: EpochData) -> np.ndarray:
        names = list(epoch.ch_names)
        if names != self.ch_names:
            index = {ch: i for i, ch in enumerate(names)}
            missing = [ch for ch in self.ch_names if ch not in index]
            if missing:
                raise RewardError(
                    f"the personal estimator needs channels {missing[:8]} absent from the epoch"
                )
            data = np.asarray(epoch.data)[[index[ch] for ch in self.ch_names]]
        else:
            data = np.asarray(epoch.data)
        if float(epoch.sfreq) != self.sfreq or float(epoch.tmin) != self.tmin:
            raise RewardError(
                f"the personal estimator was fitted on epochs at {self.sfreq:g} Hz from "
                f"{self.tmin:g} s, not {epoch.sfreq:g} Hz from {epoch.tmin:g} s"
            )
        return design(data, self.ch_names, self.sfreq, self.tmin, self.spec)[0]

    def predict(self, epochs: Sequence[EpochData]) -> np.ndarray:
        """Calibrated predicted ratings (on the rating scale, not clipped)."""
        X = np.stack([self._x(e) for e in epochs])
        raw = self.intercept + ((X - self.mean) / self.scale) @ self.coef
        return self.offset + self.slope * raw

    def to_unit(self, rating: float) -> float:
        """A rating mapped from the scale (low, high) to [0, 1], clipped."""
        lo, hi = self.rating_scale
        return float(np.clip((rating - lo) / (hi - lo), 0.0, 1.0))

    def __call__(self, epoch: EpochData) -> Reward:
        """The predicted valence in [0, 1]; a fitted trial gets its out-of-fold value."""
        key = _epoch_key(epoch.data) if self.oof else None
        if key is not None and key in self.oof:
            rating, oof = self.oof[key], True
        else:
            rating, oof = float(self.predict([epoch])[0]), False
        details = {"predicted_valence": round(rating, 4), "cv_r": self.cv.get("r")}
        if oof:
            details["out_of_fold"] = True
        return Reward(self.to_unit(rating), details)

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """``path`` (.safetensors: mean, scale, coef) and its ``.json`` sidecar (+ ``extra``)."""
        from safetensors.numpy import save

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        finite = np.where(np.isfinite(self.scale), self.scale, 0.0)  # 0 = constant feature
        tensors = {
            "mean": np.ascontiguousarray(self.mean, np.float64),
            "scale": np.ascontiguousarray(finite, np.float64),
            "coef": np.ascontiguousarray(self.coef, np.float64),
        }
        _atomic_write(path, save(tensors, metadata={"format": FORMAT}))
        meta = {**self.describe(), **(extra or {})}
        _atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
        return path

    def describe(self) -> dict[str, Any]:
        """Everything but the arrays (the JSON sidecar)."""
        return {
            "format": FORMAT,
            "fitted": True,
            "ch_names": self.ch_names,
            "sfreq": self.sfreq,
            "tmin": self.tmin,
            "n_times": self.n_times,
            "features": asdict(self.spec),
            "intercept": self.intercept,
            "ridge_alpha": self.ridge_alpha,
            "slope": self.slope,
            "offset": self.offset,
            "rating_scale": list(self.rating_scale),
            "cv": self.cv,
            "out_of_fold": self.oof,
        }

    @classmethod
    def load(cls, path: str | Path) -> PersonalEstimator:
        """Read :meth:`save`'s two files (safetensors + JSON; no pickle)."""
        from safetensors.numpy import load_file

        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        if meta.get("format") != FORMAT:
            raise RewardError(f"{path}: not a personal estimator ({meta.get('format')!r})")
        t = load_file(str(path))
        scale = t["scale"]
        scale = np.where(scale == 0.0, np.inf, scale)
        return cls(
            ch_names=list(meta["ch_names"]),
            sfreq=float(meta["sfreq"]),
            tmin=float(meta["tmin"]),
            n_times=int(meta["n_times"]),
            spec=FeatureSpec.from_json(meta["features"]),
            mean=t["mean"],
            scale=scale,
            coef=t["coef"],
            intercept=float(meta["intercept"]),
            ridge_alpha=float(meta["ridge_alpha"]),
            slope=float(meta["slope"]),
            offset=float(meta["offset"]),
            rating_scale=(float(meta["rating_scale"][0]), float(meta["rating_scale"][1])),
            cv=dict(meta["cv"]),
            oof={str(k): float(v) for k, v in meta["out_of_fold"].items()},
        )


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def fit_personal(
    epochs: Sequence[EpochData],
    ratings: Sequence[float],
    scale: tuple[float, float] = (1.0, 9.0),
    seed: int = 0,
    *,
    folds: int = 5,
    permutations: int = 200,
    p_threshold: float = 0.05,
    min_trials: int = 12,
    spec: FeatureSpec = FeatureSpec(),
) -> PersonalEstimator:
    """Fit the estimator on calibration epochs and their valence ratings; CV inside them.

    Raises :class:`PersonalFitError` when fewer than ``min_trials`` (or ``folds``) trials
    are given or the ratings do not vary. The returned estimator may not decode: check
    ``decodes`` (or use :class:`PersonalReward`, which falls back).
    """
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    with threadpool_limits(1):  # a thousand small eigh: threads cost more than they give
        return _fit(
            epochs, ratings, scale, seed, folds, permutations, p_threshold, min_trials, spec, t0
        )


def _fit(epochs, ratings, scale, seed, folds, permutations, p_threshold, min_trials, spec, t0):
    y = np.asarray(ratings, dtype=np.float64)
    n = len(y)
    lo, hi = float(scale[0]), float(scale[1])
    if not hi > lo:
        raise PersonalFitError(f"rating scale {[lo, hi]} needs low < high")
    if len(epochs) != n:
        raise PersonalFitError(f"{len(epochs)} epochs but {n} ratings")
    if n < max(min_trials, folds, 4):
        raise PersonalFitError(
            f"only {n} rated calibration trials ({max(min_trials, folds)} needed)"
        )
    if not np.isfinite(y).all():
        raise PersonalFitError("a rating is not finite")
    if float(y.std()) < 1e-9:
        raise PersonalFitError(f"the ratings do not vary (all {y[0]:g})")
    first = epochs[0]
    ch_names, sfreq, tmin = list(first.ch_names), float(first.sfreq), float(first.tmin)
    n_times = int(np.asarray(first.data).shape[-1])
    for e in epochs:
        if list(e.ch_names) != ch_names or float(e.sfreq) != sfreq or float(e.tmin) != tmin:
            raise PersonalFitError("calibration epochs differ in channels, rate or start")
        if np.asarray(e.data).shape != (len(ch_names), n_times):
            raise PersonalFitError("calibration epochs differ in length")
    data = np.stack([np.asarray(e.data, dtype=np.float64) for e in epochs])
    X, block_w = design(data, ch_names, sfreq, tmin, spec)
    if not np.isfinite(X).all():
        raise PersonalFitError("an epoch gives non-finite features")
    rng = np.random.default_rng(seed)
    k = min(folds, n)
    fold_of = _stratified_folds(y, k, rng)
    oof = _oof(X, block_w, y, fold_of)
    r = _pearson(oof, y)
    null = np.empty(permutations)
    for i in range(permutations):
        yp = rng.permutation(y)
        null[i] = _pearson(_oof(X, block_w, yp, _stratified_folds(yp, k, rng)), yp)
    p = float((1 + np.sum(null >= r - 1e-12)) / (1 + permutations))
    ci = fisher_ci(r, n)
    # the full model: every trial, its own penalty; calibrated by the out-of-fold slope
    mean, sc = _standardise(X, block_w)
    coef, intercept, alpha = _ridge((X - mean) / sc, y)
    oof_c = oof - oof.mean()
    var = float(oof_c @ oof_c)
    slope = max(float(oof_c @ (y - y.mean())) / var, 0.0) if var > 1e-12 else 0.0
    fitted_raw = intercept + ((X - mean) / sc) @ coef
    offset = float(y.mean() - slope * fitted_raw.mean())
    oof_rating = y.mean() + slope * oof_c  # the out-of-fold predictions, calibrated alike
    decodes = bool(r > 0 and p < p_threshold)
    cv = {
        "decodes": decodes,
        "r": round(r, 4),
        "r_ci95": [round(ci[0], 4), round(ci[1], 4)],
        "p_value": round(p, 4),
        "p_threshold": p_threshold,
        "n_trials": n,
        "folds": int(k),
        "n_permutations": int(permutations),
        "null_r_mean": round(float(null.mean()), 4) if permutations else None,
        "ridge_alpha": alpha,
        "n_features": int(X.shape[1]),
        "rating_mean": round(float(y.mean()), 4),
        "rating_sd": round(float(y.std()), 4),
        "seed": int(seed),
        "fit_s": round(time.perf_counter() - t0, 3),
    }
    return PersonalEstimator(
        ch_names=ch_names,
        sfreq=sfreq,
        tmin=tmin,
        n_times=n_times,
        spec=spec,
        mean=mean,
        scale=sc,
        coef=coef,
        intercept=intercept,
        ridge_alpha=alpha,
        slope=slope,
        offset=offset,
        rating_scale=(lo, hi),
        cv=cv,
        oof={
            _epoch_key(e.data): round(float(v), 6) for e, v in zip(epochs, oof_rating, strict=True)
        },
        cv_output={_epoch_key(e.data): float(v) for e, v in zip(epochs, oof, strict=True)},
    )


# -- the reward with its fallback -------------------------------------------------------------
class PersonalReward(RewardMode):
    """The personal estimator's reward when the participant decodes, else the fallback.

    ``record`` is what the session keeps (``personal_estimator``): decodes, the reward
    in use, the fallback and why, and the cross-validation figures.
    """

    mode = "personal"

    @classmethod
    def from_settings(cls, settings) -> RewardFunction:
        """Refused: it is fitted on the participant's own ratings (the worker, or offline)."""
        raise RewardError(
            f"generation.reward.mode = '{cls.mode}' is fitted on the participant's own "
            "ratings during a session (workers/generation/personal_fit.py); offline, fit it "
            "with workers.generation.personal_fit.personal_reward_for (calibration epochs + "
            "ratings)"
        )

    @classmethod
    def fallback_from_settings(cls, settings) -> AsymmetryReward:
        """The index of ``settings.fallback`` that rewards a participant who does not decode."""
        return AsymmetryReward.from_settings(settings.fallback)

    @classmethod
    def channel_check(cls, settings, ch_names: Sequence[str]) -> tuple[str, str]:
        """It reads every channel; its fallback needs one of the frontal pairs (a warning)."""
        found = cls.fallback_from_settings(settings).reads(ch_names)
        if not found:
            return "warn", (
                f"reward '{cls.mode}' reads every channel, but its fallback for a participant "
                f"who does not decode ({AsymmetryReward.mode}) needs one of the frontal pairs "
                f"{[list(p) for p in settings.fallback.pairs]}: none is in the stream"
            )
        return "ok", f"reward '{cls.mode}'; its fallback reads {found}"

    def __init__(
        self,
        estimator: PersonalEstimator | None,
        fallback: RewardFunction,
        *,
        fallback_name: str = "asymmetry",
        reason: str = "",
        n_trials: int | None = None,
        record: dict[str, Any] | None = None,
        fallback_r: float | None = None,
        fallback_p: float | None = None,
    ) -> None:
        self.estimator = estimator
        self.fallback = fallback
        self.fallback_name = fallback_name
        cv = dict(estimator.cv) if estimator is not None else {}
        decodes = bool(cv.get("decodes", False))
        # a training-free index fits nothing, so its r on the calibration trials is as
        # honest as the estimator's out-of-fold r: the better of the two drives the loop
        uses = decodes and (fallback_r is None or cv["r"] >= fallback_r)
        index = (
            ""
            if fallback_r is None
            else (
                f"; the {fallback_name} index on the same trials: r = {fallback_r:.2f}"
                + ("" if fallback_p is None else f", permutation p = {fallback_p:.3f}")
            )
        )
        if not reason:
            if estimator is None:
                reason = "no estimator"
            elif decodes:
                reason = (
                    f"decodes: out-of-fold r = {cv['r']:.2f} (95 % CI {cv['r_ci95'][0]:.2f} to "
                    f"{cv['r_ci95'][1]:.2f}), permutation p = {cv['p_value']:.3f} < "
                    f"{cv['p_threshold']:g}{index}"
                )
                if not uses:
                    reason += f", higher than the estimator's: the {fallback_name} index is used"
            else:
                reason = (
                    f"does not decode above chance: out-of-fold r = {cv['r']:.2f} (95 % CI "
                    f"{cv['r_ci95'][0]:.2f} to {cv['r_ci95'][1]:.2f}), permutation p = "
                    f"{cv['p_value']:.3f} (needs r > 0 and p < {cv['p_threshold']:g}){index}"
                )
        self.record: dict[str, Any] = {
            "decodes": decodes,
            "reward": "personal" if uses else fallback_name,
            "fallback": None if uses else fallback_name,
            "fallback_r": None if fallback_r is None else round(float(fallback_r), 4),
            "fallback_p": None if fallback_p is None else round(float(fallback_p), 4),
            "reason": reason,
            "n_trials": cv.get("n_trials", n_trials),
            "cv_r": cv.get("r"),
            "cv_r_ci95": cv.get("r_ci95"),
            "p_value": cv.get("p_value"),
            "p_threshold": cv.get("p_threshold"),
            "folds": cv.get("folds"),
            "n_permutations": cv.get("n_permutations"),
            "ridge_alpha": cv.get("ridge_alpha"),
            "n_features": cv.get("n_features"),
            "rating_mean": cv.get("rating_mean"),
            "rating_sd": cv.get("rating_sd"),
            "fit_s": cv.get("fit_s"),
        }
        if record is not None:  # as saved (a resumed session)
            self.record = dict(record)

    @property
    def decodes(self) -> bool:
        """Whether the estimator decodes the participant above chance."""
        return bool(self.record["decodes"])

    @property
    def uses_estimator(self) -> bool:
        """Whether the estimator (not the fallback index) gives the reward."""
        return self.record.get("reward", "personal" if self.decodes else None) == "personal"

    def __call__(self, epoch: EpochData) -> Reward:
        """The reward of one epoch."""
        if self.uses_estimator:
            return self.estimator(epoch)
        out = as_reward(self.fallback(epoch))
        return Reward(out.value, {**out.details, "fallback": self.fallback_name})

    def save(self, path: str | Path) -> Path:
        """The estimator (if any) at ``path`` and ``path.json`` with :attr:`record`."""
        path = Path(path)
        if self.estimator is not None:
            return self.estimator.save(path, {"record": self.record})
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "fitted": False, "record": self.record}
        _atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
        return path

    @classmethod
    def load(
        cls, path: str | Path, fallback: RewardFunction, *, fallback_name: str = "asymmetry"
    ) -> PersonalReward:
        """What :meth:`save` wrote, with ``fallback`` (not saved: it is the protocol's)."""
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        if meta.get("format") != FORMAT:
            raise RewardError(f"{path}: not a personal estimator ({meta.get('format')!r})")
        est = PersonalEstimator.load(path) if meta.get("fitted") else None
        return cls(est, fallback, fallback_name=fallback_name, record=meta.get("record"))


def personal_reward(
    epochs: Sequence[EpochData],
    ratings: Sequence[float],
    scale: tuple[float, float],
    fallback: RewardFunction,
    seed: int = 0,
    *,
    fallback_name: str = "asymmetry",
    **fit: Any,
) -> PersonalReward:
    """:func:`fit_personal`, with the fallback when it cannot fit or does not decode."""
    try:
        est = fit_personal(epochs, ratings, scale, seed, **fit)
    except (ValueError, np.linalg.LinAlgError) as err:  # PersonalFitError, RewardError...
        return PersonalReward(
            None,
            fallback,
            fallback_name=fallback_name,
            reason=f"not fitted: {err}",
            n_trials=len(ratings),
        )
    r_fb, p_fb = index_agreement(
        epochs, ratings, fallback, seed, permutations=int(fit.get("permutations", 200))
    )
    return PersonalReward(
        est, fallback, fallback_name=fallback_name, fallback_r=r_fb, fallback_p=p_fb
    )


def index_agreement(
    epochs: Sequence[EpochData],
    ratings: Sequence[float],
    index: RewardFunction,
    seed: int = 0,
    *,
    permutations: int = 200,
) -> tuple[float | None, float | None]:
    """(r, permutation p) of a training-free index with the ratings; (None, None) if it fails."""
    try:
        values = np.asarray([as_reward(index(e)).value for e in epochs], dtype=np.float64)
    except (ValueError, RuntimeError) as err:  # RewardError: the index cannot read these
        logger.warning("the fallback index cannot read the calibration epochs: %s", err)
        return None, None
    y = np.asarray(ratings, dtype=np.float64)
    if not np.isfinite(values).all() or float(values.std()) < 1e-12:
        return None, None
    r = _pearson(values, y)
    rng = np.random.default_rng(seed)
    null = np.asarray([_pearson(values, rng.permutation(y)) for _ in range(permutations)])
    p = float((1 + np.sum(null >= r - 1e-12)) / (1 + permutations))
    return r, p
