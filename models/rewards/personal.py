"""The personal reward: a pseudo reward estimator fitted on the participant's own ratings.

The poster's premise is that normative affective labels fail to match an individual
brain, so the reward that drives the loop is learnt per participant: each calibration
epoch (every channel) is mapped to the valence the participant rated for that image
(``generation.reward.mode = "personal"``; the worker's side is
:mod:`workers.generation.personal_fit`).

Model (:mod:`models.rewards.personal_cv`, scikit-learn pieces): four candidates, one
per feature map of :mod:`models.rewards.personal_features` (the window means of the
strongest evoked component and of every channel, band powers, the asymmetry index),
each a ridge regression of the ratings. A candidate whose leave-one-out error on the
training trials beats the mean rating (a paired t over the trials above the one-sided
5 % point) shows signal and keeps its leave-one-out penalty; any other gets the
analytic Ledoit-Wolf shrinkage penalty. The asymmetry index, whose direction is known
before any rating, shows signal by its correlation with the training ratings in that
direction instead (one-sided t above the same point). The estimate is the mean of the
candidates that show signal; when none does, the mean of the two ERP candidates with the shrinkage
penalty (the shrinkage-LDA decoder of ERP research as a regression, on every channel
and on the evoked component). The component is learnt from the calibration epochs
without their ratings (single-class xDAWN), so a shuffle of the ratings leaves it as
it is and the permutation test below still covers the whole fit.
Nothing is tied to a montage: every map reads the epochs' own channels and window, and
the asymmetry index the protocol's homologous pairs or the montage's own.

Why this model (``eegs bench estimator`` on real faces/houses recordings and on the
brain model's simulated participants; docs/architecture.md section 6): each map alone
wins somewhere and fails elsewhere (the ERP where an LPP or an N170 differs, band power
where the frontal alpha balance carries valence); the plain mean of all three was
diluted by the maps without signal; choosing the best candidate by an inner
cross-validation, or averaging every candidate when none shows signal, let a map
without signal in by chance at 48-96 trials (on 4 real channels, where the ERP's own
signal rarely shows in a leave-one-out test); and a fixed penalty was either too weak
(Ledoit-Wolf on 64 channels at 200-400 trials) or, chosen by leave-one-out on a flat
curve, noise. The evoked component (the ERP candidate's equal in the no-signal mean)
lifted the mean out-of-fold r at 200 trials on 6 LPP and 4 mixed participants of the
brain model at lab realism from 0.08 and 0.06 to 0.13 (xDAWN + tangent space: 0.11 and
0.13; 3 draws each), and in ``eegs bench estimator`` at lab (README) put the estimator
ahead of the best anchor on the LPP participant at every size.

Cross-validation inside the calibration block: ``folds`` folds stratified by rating
(:func:`stratified_folds`; each run of k consecutive ranks spread over the k folds),
each fold's model fitted on the other folds alone; the out-of-fold predictions give
Pearson r, its 95 % confidence interval (Fisher z) and a permutation p-value: the
ratings shuffled ``permutations`` times within the folds and the whole cross-validation
run again on each (all at once, :func:`models.rewards.personal_cv.out_of_fold`),
p = (1 + #{r_perm >= r}) / (1 + permutations). The asymmetry index is one of the
candidates, so the test covers it too: no separate choice of the index is made on the
calibration trials (its r and p there are still reported, ``fallback_r``/``fallback_p``).

Decision rule: the participant **decodes** when r > 0 and p < ``p_threshold``. Then
the reward of an epoch is the predicted valence mapped from the rating scale (low,
high) to [0, 1] and clipped, calibrated by the out-of-fold slope (rating regressed on
the out-of-fold prediction) so it estimates the rating itself. An epoch the estimator
was fitted on (recognised by its bytes) gets its out-of-fold prediction, never the
in-sample one, so calibration images can join the generator's observations without
their ratings leaking in.

Fallback: when the participant does not decode (or too few trials were rated, or the
ratings do not vary), the reward is the training-free frontal alpha asymmetry index
(:class:`models.rewards.asymmetry.AsymmetryReward`). :class:`PersonalReward` holds that
choice and the record the session keeps (``personal_estimator`` in ``events.jsonl`` and
``summary.json``: decodes, the reward in use, cv r, CI, p, each candidate's r, the
index's r and p, n trials, fallback and why).

Files (:meth:`PersonalEstimator.save`): arrays in safetensors, everything else in a
JSON sidecar; never pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from models.rewards.personal_cv import (
    candidate_model,
    fold_paths,
    out_of_fold,
    pearson_columns,
    within_fold_permutations,
)
from models.rewards.personal_features import (
    FeatureMap,
    FeatureSpec,
    Geometry,
    build_maps,
    index_from_settings,
    index_settings,
)

logger = logging.getLogger("eegs.personal_reward")

FORMAT = "eegs-personal-estimator/3"
#: The asymmetry candidate's index when the caller gives none (the protocol's defaults
#: over the homologous frontal pairs the montage holds).
DEFAULT_INDEX = {"pairs": [], "band_hz": [8.0, 13.0], "window_s": [0.3, 1.0], "alpha_scale": 0.5}
_Z95 = 1.959963984540054


class PersonalFitError(RewardError):
    """The calibration trials cannot fit an estimator (too few, constant ratings...)."""


def _epoch_key(data: np.ndarray) -> str:
    """Identity of an epoch's samples (the fitted trials get their out-of-fold value)."""
    a = np.ascontiguousarray(data, dtype=np.float64)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


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


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(pearson_columns(np.asarray(a)[:, None], np.asarray(b)[:, None])[0])


def fisher_ci(r: float, n: int) -> tuple[float, float]:
    """95 % confidence interval of a Pearson r from n pairs (Fisher z)."""
    if n <= 3:
        return (-1.0, 1.0)
    z = np.arctanh(np.clip(r, -0.999999, 0.999999))
    half = _Z95 / np.sqrt(n - 3)
    return (float(np.tanh(z - half)), float(np.tanh(z + half)))


# -- the estimator ------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One fitted candidate: standardisation and ridge weights of one feature map."""

    name: str
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    penalty: float
    weight: float  # in the estimate's mean (0: no signal on the calibration trials)
    signal_t: float  # paired t of its leave-one-out gain over the mean rating

    def predict(self, F: np.ndarray) -> np.ndarray:
        """Predicted ratings (uncalibrated) from this map's features."""
        return self.intercept + ((F - self.mean) / self.scale) @ self.coef


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
    index: dict[str, Any] | None  # the asymmetry candidate's index settings
    learnt: dict[str, np.ndarray]  # what each map learnt from the calibration epochs
    candidates: list[Candidate]
    slope: float  # out-of-fold calibration: rating ~ offset + slope * prediction
    offset: float
    rating_scale: tuple[float, float]
    cv: dict[str, Any] = field(default_factory=dict)
    oof: dict[str, float] = field(default_factory=dict)  # epoch key -> out-of-fold rating
    # epoch key -> the uncalibrated out-of-fold output (not saved: the fit's own trials)
    cv_output: dict[str, float] = field(default_factory=dict, repr=False)
    _maps: dict[str, FeatureMap] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        geo = Geometry(tuple(self.ch_names), self.sfreq, self.tmin, self.n_times)
        index = None if self.index is None else index_from_settings(self.index)
        maps, _ = build_maps(geo, self.spec, index, self.learnt)
        self._maps = {m.name: m for m in maps}
        missing = [c.name for c in self.candidates if c.name not in self._maps]
        if missing:
            raise RewardError(f"the personal estimator's maps {missing} cannot read its epochs")

    @property
    def decodes(self) -> bool:
        """The decision rule: out-of-fold r > 0 and permutation p < the threshold."""
        return bool(self.cv.get("decodes", False))

    def _stack(self, epochs: Sequence[EpochData]) -> tuple[np.ndarray, list[EpochData]]:
        out, aligned = [], []
        for epoch in epochs:
            names = list(epoch.ch_names)
            data = np.asarray(epoch.data, dtype=np.float64)
            if names != self.ch_names:
                index = {ch: i for i, ch in enumerate(names)}
                missing = [ch for ch in self.ch_names if ch not in index]
                if missing:
                    raise RewardError(
                        f"the personal estimator needs channels {missing[:8]} absent from the epoch"
                    )
                data = data[[index[ch] for ch in self.ch_names]]
            if float(epoch.sfreq) != self.sfreq or float(epoch.tmin) != self.tmin:
                raise RewardError(
                    f"the personal estimator was fitted on epochs at {self.sfreq:g} Hz from "
                    f"{self.tmin:g} s, not {epoch.sfreq:g} Hz from {epoch.tmin:g} s"
                )
            if data.shape[-1] != self.n_times:
                raise RewardError(
                    f"the personal estimator was fitted on epochs of {self.n_times} samples, "
                    f"not {data.shape[-1]}"
                )
            out.append(data)
            aligned.append(EpochData(data, self.ch_names, self.sfreq, self.tmin))
        return np.stack(out), aligned

    def raw(self, epochs: Sequence[EpochData]) -> np.ndarray:
        """The candidates' weighted prediction (before the out-of-fold calibration)."""
        data, aligned = self._stack(epochs)
        return sum(
            c.weight * c.predict(self._maps[c.name].transform(data, aligned))
            for c in self.candidates
            if c.weight > 0
        )

    def predict(self, epochs: Sequence[EpochData]) -> np.ndarray:
        """Calibrated predicted ratings (on the rating scale, not clipped)."""
        return self.offset + self.slope * self.raw(epochs)

    def out_of_fold(self, epochs: Sequence[EpochData]) -> np.ndarray:
        """The out-of-fold output of each of the fitted epochs (before calibration)."""
        try:
            return np.asarray([self.cv_output[_epoch_key(e.data)] for e in epochs])
        except KeyError:
            raise RewardError("an epoch the estimator was not fitted on") from None

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
        """``path`` (.safetensors: each candidate's arrays) and its ``.json`` sidecar."""
        from safetensors.numpy import save

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for c in self.candidates:
            for key in ("mean", "scale", "coef"):
                tensors[f"{c.name}.{key}"] = np.ascontiguousarray(getattr(c, key), np.float64)
        for name, arr in self.learnt.items():
            tensors[f"{name}.learnt"] = np.ascontiguousarray(arr, np.float64)
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
            "features": self.spec.to_json(),
            "index": self.index,
            "learnt": sorted(self.learnt),
            "candidates": [
                {
                    "name": c.name,
                    "intercept": c.intercept,
                    "penalty": c.penalty,
                    "weight": c.weight,
                    "signal_t": c.signal_t,
                }
                for c in self.candidates
            ],  # fmt: skip
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
            raise RewardError(
                f"{path}: not a personal estimator of this version ({meta.get('format')!r}, "
                f"expected {FORMAT!r}); fit it again on the session's calibration block"
            )
        t = load_file(str(path))
        candidates = [
            Candidate(c["name"], t[f"{c['name']}.mean"], t[f"{c['name']}.scale"],
                      t[f"{c['name']}.coef"], float(c["intercept"]), float(c["penalty"]),
                      float(c["weight"]), float(c["signal_t"]))
            for c in meta["candidates"]
        ]  # fmt: skip
        return cls(
            ch_names=list(meta["ch_names"]),
            sfreq=float(meta["sfreq"]),
            tmin=float(meta["tmin"]),
            n_times=int(meta["n_times"]),
            spec=FeatureSpec.from_json(meta["features"]),
            index=meta["index"],
            learnt={name: t[f"{name}.learnt"] for name in meta["learnt"]},
            candidates=candidates,
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
    index: AsymmetryReward | None = None,
) -> PersonalEstimator:
    """Fit the estimator on calibration epochs and their valence ratings; CV inside them.

    ``index`` is the asymmetry candidate's index (the personal reward's fallback; by
    default the protocol's default band and window over the montage's homologous frontal
    pairs). Raises :class:`PersonalFitError` when fewer than ``min_trials`` (or
    ``folds``) trials are given, the ratings do not vary or no feature map can read the
    epochs. The returned estimator may not decode: check ``decodes`` (or use
    :class:`PersonalReward`, which falls back).
    """
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    with threadpool_limits(1):  # small matrices: threads cost more than they give
        return _fit(epochs, ratings, scale, seed, folds, permutations, p_threshold, min_trials,
                    spec, index, t0)  # fmt: skip


def _fit(epochs, ratings, scale, seed, folds, permutations, p_threshold, min_trials, spec,
         index, t0) -> PersonalEstimator:  # fmt: skip
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
    index_json = index_settings(index) if index is not None else dict(DEFAULT_INDEX)
    geo = Geometry(tuple(ch_names), sfreq, tmin, n_times)
    maps, skipped = build_maps(geo, spec, index_from_settings(index_json))
    data = np.stack([np.asarray(e.data, dtype=np.float64) for e in epochs])
    blocks = []
    for m in list(maps):
        try:
            F = m.fit(data).transform(data, epochs)  # a map learns from the epochs alone
        except (ValueError, np.linalg.LinAlgError) as err:
            skipped[m.name] = f"cannot read these epochs: {err}"
            maps.remove(m)
            continue
        if not np.isfinite(F).all():
            skipped[m.name] = "an epoch gives non-finite features"
            maps.remove(m)
            continue
        blocks.append(F)
    if not maps:
        raise PersonalFitError(f"no feature map can read these epochs: {skipped}")

    # cross-validation of the real ratings (column 0) and of every permutation at once
    rng = np.random.default_rng(seed)
    k = min(folds, n)
    fold_of = _stratified_folds(y, k, rng)
    order = within_fold_permutations(fold_of, permutations, rng)
    Y = np.column_stack([y, y[order].T]) if permutations else y[:, None]
    paths = fold_paths(
        [(F, m.standardise, m.sign) for F, m in zip(blocks, maps, strict=True)], fold_of
    )
    default = [m.reads_erp for m in maps]
    oof_all = out_of_fold(paths, Y, default=default)
    r_all = pearson_columns(oof_all, Y)
    r, null = float(r_all[0]), r_all[1:]
    p = float((1 + np.sum(null >= r - 1e-12)) / (1 + permutations))
    oof = oof_all[:, 0]
    each = {
        m.name: round(_pearson(out_of_fold(paths, y[:, None], i)[:, 0], y), 4)
        for i, m in enumerate(maps)
    }

    # the model on every trial (scikit-learn), calibrated by the out-of-fold slope
    F_all = np.concatenate(blocks, axis=1)
    edges = np.cumsum([0] + [F.shape[1] for F in blocks])
    spans = [(m.name, slice(int(a), int(b)), m.standardise, m.sign)
             for m, a, b in zip(maps, edges[:-1], edges[1:], strict=True)]  # fmt: skip
    model = candidate_model(spans, default=default).fit(F_all, y)
    candidates = []
    for (name, _, std, _), pipe, w in zip(spans, model.estimators_, model.weights_, strict=True):
        scaler, ridge = pipe[1], pipe[2]
        scale_ = scaler.scale_ if std else np.ones(len(scaler.mean_))
        candidates.append(Candidate(name, scaler.mean_, scale_, ridge.coef_, ridge.intercept_,
                                    ridge.alpha_, float(w), round(ridge.signal_t_, 3)))  # fmt: skip
    oof_c = oof - oof.mean()
    var = float(oof_c @ oof_c)
    slope = max(float(oof_c @ (y - y.mean())) / var, 0.0) if var > 1e-12 else 0.0
    fitted_raw = model.predict(F_all)
    offset = float(y.mean() - slope * fitted_raw.mean())
    oof_rating = y.mean() + slope * oof_c  # the out-of-fold predictions, calibrated alike
    decodes = bool(r > 0 and p < p_threshold)
    ci = fisher_ci(r, n)
    cv = {
        "decodes": decodes,
        "r": round(r, 4),
        "r_ci95": [round(ci[0], 4), round(ci[1], 4)],
        "p_value": round(p, 4),
        "p_threshold": p_threshold,
        "n_trials": n,
        "folds": int(k),
        "n_permutations": int(permutations),
        "permutation": "ratings shuffled within folds; the whole cross-validation per shuffle",
        "null_r_mean": round(float(null.mean()), 4) if permutations else None,
        "candidates": each,
        "skipped": skipped,
        "ridge_alpha": {c.name: float(c.penalty) for c in candidates},
        "weights": {c.name: round(c.weight, 4) for c in candidates},
        "n_features": int(F_all.shape[1]),
        "rating_mean": round(float(y.mean()), 4),
        "rating_sd": round(float(y.std()), 4),
        "seed": int(seed),
        "fit_s": round(time.perf_counter() - t0, 3),
    }
    keys = [_epoch_key(e.data) for e in epochs]
    return PersonalEstimator(
        ch_names=ch_names,
        sfreq=sfreq,
        tmin=tmin,
        n_times=n_times,
        spec=spec,
        index=index_json,
        learnt={m.name: m.learnt for m in maps if m.learnt is not None},
        candidates=candidates,
        slope=slope,
        offset=offset,
        rating_scale=(lo, hi),
        cv=cv,
        oof={k_: round(float(v), 6) for k_, v in zip(keys, oof_rating, strict=True)},
        cv_output={k_: float(v) for k_, v in zip(keys, oof, strict=True)},
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
        fallback_name: str = AsymmetryReward.mode,
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
        # the index is one of the estimator's candidates, inside its permutation test:
        # its r on the same trials is reported, not used to choose (a choice made on the
        # calibration trials themselves would escape the test)
        uses = decodes
        index = (
            ""
            if fallback_r is None
            else (
                f"; the {fallback_name} index on the same trials: r = {fallback_r:.2f}"
                + ("" if fallback_p is None else f", permutation p = {fallback_p:.3f}")
            )
        )
        each = cv.get("candidates") or {}
        parts = (
            ""
            if not each
            else "; each candidate alone: "
            + ", ".join(f"{name} r = {value:.2f}" for name, value in each.items())
        )
        if not reason:
            if estimator is None:
                reason = "no estimator"
            elif decodes:
                reason = (
                    f"decodes: out-of-fold r = {cv['r']:.2f} (95 % CI {cv['r_ci95'][0]:.2f} to "
                    f"{cv['r_ci95'][1]:.2f}), permutation p = {cv['p_value']:.3f} < "
                    f"{cv['p_threshold']:g}{parts}{index}"
                )
            else:
                reason = (
                    f"does not decode above chance: out-of-fold r = {cv['r']:.2f} (95 % CI "
                    f"{cv['r_ci95'][0]:.2f} to {cv['r_ci95'][1]:.2f}), permutation p = "
                    f"{cv['p_value']:.3f} (needs r > 0 and p < {cv['p_threshold']:g}){parts}"
                    f"{index}"
                )
        reads = calibration_verdict(decodes, fallback_r, fallback_p, cv.get("p_threshold"))
        if reads == "neither" and estimator is not None:
            reason += (
                f"; neither the estimator nor the {fallback_name} index reads this "
                "participant's ratings: expect the closed loop to move little (README, "
                "'What a session's calibration tells')"
            )
        self.record: dict[str, Any] = {
            "decodes": decodes,
            "reads": reads,
            "reward": self.mode if uses else fallback_name,
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
            "candidates": cv.get("candidates"),
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
        return record_uses_estimator(self.record)

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
        cls,
        path: str | Path,
        fallback: RewardFunction,
        *,
        fallback_name: str = AsymmetryReward.mode,
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
    fallback_name: str = AsymmetryReward.mode,
    **fit: Any,
) -> PersonalReward:
    """:func:`fit_personal`, with the fallback when it cannot fit or does not decode."""
    if isinstance(fallback, AsymmetryReward):
        fit.setdefault("index", fallback)  # the fallback is also one of the candidates
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


def calibration_verdict(
    decodes: bool,
    index_r: float | None,
    index_p: float | None,
    p_threshold: float | None = None,
) -> str:
    """What reads the participant's calibration ratings: the estimator, the index, neither.

    ``estimator``: the participant decodes; ``index``: not, but the training-free index
    alone follows the ratings (r > 0 and its permutation p below the threshold, reported
    beside the estimator's test, never used to choose); ``neither``. On the brain model
    the loop gains where one of the two reads the ratings and little where neither does
    (``eegs bench loop``'s ``personal_gain_a_by_verdict``).
    """
    if decodes:
        return "estimator"
    threshold = 0.05 if p_threshold is None else float(p_threshold)
    if index_r is not None and index_p is not None and index_r > 0 and index_p < threshold:
        return "index"
    return "neither"


def record_verdict(record: dict[str, Any]) -> str:
    """:func:`calibration_verdict` of a ``personal_estimator`` record (old ones lack ``reads``)."""
    return record.get("reads") or calibration_verdict(
        bool(record.get("decodes")), record.get("fallback_r"), record.get("fallback_p"),
        record.get("p_threshold"),
    )  # fmt: skip


def record_uses_estimator(record: dict[str, Any]) -> bool:
    """Whether a ``personal_estimator`` record's reward is the estimator (not the fallback)."""
    mode = PersonalReward.mode
    return record.get("reward", mode if record.get("decodes") else None) == mode


def loop_stop_reason(record: dict[str, Any], when_undecoded: str) -> str | None:
    """Why a session's closed loop should end after its calibration (None: it runs).

    ``when_undecoded`` (``generation.reward``): "index" always runs the loop; "stop" ends
    it where the estimator does not give the reward; "index_or_stop" only where neither
    the estimator nor the index reads the ratings. The worker sends the round in flight
    as the block's last; ``eegs bench loop`` ends the same sessions at the same round.
    """
    if when_undecoded == "index" or record_uses_estimator(record):
        return None
    if when_undecoded == "index_or_stop" and record_verdict(record) != "neither":
        return None
    what = "not decoded"
    if when_undecoded == "index_or_stop":
        what = "neither decodes nor the index reads the ratings"
    return f"{what} ({record.get('reason', 'no verdict')}); when_undecoded = '{when_undecoded}'"


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
