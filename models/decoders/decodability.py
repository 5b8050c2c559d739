"""How well estimators decode a participant's ratings from their epochs, over calibration draws.

A calibration block of ``n`` trials is a random draw from a participant's trials
(:func:`draw_trials`); inside it, ``k`` folds stratified by rating, the session's own
rule (:func:`models.rewards.personal.stratified_folds`), and each estimator's
out-of-fold output is scored against the ratings (:func:`score_draw`):

- ``r``: Pearson r of the output with the ratings;
- ``auc``: the output's ROC AUC for the ratings above the median
  (:func:`models.decoders.anchors.median_split`);
- ``decodes``: the session's decision rule, r > 0 and p < ``p_threshold``, where p is
  the estimator's own permutation p when it has one (the personal estimator's covers
  its whole fit), else the one-sided analytic p of r (``p_rule = "analytic"``: a
  permutation test per draw would cost hundreds of fits of a trained anchor).

:func:`participant_draws` runs every size and draw; with ``null`` each draw is scored a
second time with its ratings permuted, and the share of those permuted draws that
decode is the false-positive rate. The draws, folds and permutations come from
``seed``, so the same call gives the same trials to every estimator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.decoders.anchors import ANCHORS, anchor_oof, median_split


@dataclass(frozen=True)
class Draw:
    """One calibration block: epochs (n, channels, times) µV, ratings, and its folds."""

    data: np.ndarray
    ratings: np.ndarray
    ch_names: list[str]
    sfreq: float
    tmin: float
    scale: tuple[float, float]
    folds: np.ndarray
    seed: int


#: An estimator: a draw -> (out-of-fold output per trial, its own p or None).
Estimator = Callable[[Draw], tuple[np.ndarray, float | None]]


def anchor_estimator(name: str) -> Estimator:
    """A textbook anchor (:mod:`models.decoders.anchors`) on the draw's folds."""

    def run(draw: Draw) -> tuple[np.ndarray, float | None]:
        out = anchor_oof(
            name, draw.data, draw.ratings, draw.folds, draw.ch_names, draw.sfreq, draw.tmin
        )
        return out, None

    return run


def personal_estimator(**fit: Any) -> Estimator:
    """The session's personal estimator (:func:`~models.rewards.personal.fit_personal`).

    ``fit`` are its keyword settings (``folds``, ``permutations``, ``p_threshold``...);
    it is seeded by the draw, so its folds are the draw's.
    """
    from models.rewards.base import EpochData
    from models.rewards.personal import fit_personal

    def run(draw: Draw) -> tuple[np.ndarray, float | None]:
        epochs = [EpochData(x, draw.ch_names, draw.sfreq, draw.tmin) for x in draw.data]
        est = fit_personal(epochs, draw.ratings, draw.scale, draw.seed, **fit)
        return est.out_of_fold(epochs), float(est.cv["p_value"])

    return run


def default_estimators(names: Sequence[str], **personal: Any) -> dict[str, Estimator]:
    """``personal`` and the anchors by name (``personal`` fitted with ``personal``)."""
    out: dict[str, Estimator] = {}
    for name in names:
        if name == "personal":
            out[name] = personal_estimator(**personal)
        elif name in ANCHORS:
            out[name] = anchor_estimator(name)
        else:
            raise ValueError(f"unknown estimator {name!r}; expected personal or one of {ANCHORS}")
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; 0 when either side is constant."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    den = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / den if den > 1e-12 else 0.0


def analytic_p(r: float, n: int) -> float:
    """One-sided p of a Pearson r from n pairs (t with n - 2 degrees of freedom)."""
    from scipy.stats import t

    if n <= 2:
        return 1.0
    r = float(np.clip(r, -0.999999, 0.999999))
    return float(t.sf(r * np.sqrt((n - 2) / (1 - r * r)), n - 2))


def auc(output: np.ndarray, ratings: np.ndarray) -> float | None:
    """ROC AUC of ``output`` for the ratings above the median; None with one class."""
    from sklearn.metrics import roc_auc_score

    labels = median_split(ratings)
    if labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, output))


def score_draw(
    draw: Draw, estimators: Mapping[str, Estimator], p_threshold: float
) -> list[dict[str, Any]]:
    """Each estimator on one draw: r, AUC, p (and its rule), decodes, seconds."""
    rows = []
    n = len(draw.ratings)
    for name, estimator in estimators.items():
        t0 = time.perf_counter()
        try:
            output, p = estimator(draw)
        except ValueError as err:  # an estimator that cannot read these epochs
            rows.append({"estimator": name, "error": str(err)})
            continue
        seconds = time.perf_counter() - t0
        r = pearson(output, draw.ratings)
        rule = "analytic" if p is None else "permutation"
        p = analytic_p(r, n) if p is None else p
        rows.append(
            {
                "estimator": name,
                "r": round(r, 4),
                "auc": None if (a := auc(output, draw.ratings)) is None else round(a, 4),
                "p": round(p, 4),
                "p_rule": rule,
                "decodes": bool(r > 0 and p < p_threshold),
                "seconds": round(seconds, 3),
            }
        )
    return rows


def draw_trials(n_total: int, n: int, seed: int) -> np.ndarray:
    """``n`` of ``n_total`` trials at random, in their recorded order."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=n, replace=False))


def draw_seed(seed: int, n: int, draw: int, *tags: int) -> int:
    """A reproducible seed of one draw."""
    return int(np.random.default_rng([seed, n, draw, *tags]).integers(0, 2**31 - 1))


def participant_draws(
    data: np.ndarray,
    ratings: np.ndarray,
    ch_names: Sequence[str],
    sfreq: float,
    tmin: float,
    scale: tuple[float, float],
    sizes: Sequence[int],
    n_draws: int,
    estimators: Mapping[str, Estimator],
    *,
    folds: int = 5,
    p_threshold: float = 0.05,
    seed: int = 0,
    null: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Every estimator on ``n_draws`` draws of each size (sizes above the trials skipped).

    One row per (size, draw, estimator, null): the row of :func:`score_draw` plus
    ``n_trials``, ``draw`` and ``null`` (True for the permuted ratings). ``progress``
    is called with (size, draws done) after each draw.
    """
    from models.rewards.personal import stratified_folds

    ratings = np.asarray(ratings, dtype=np.float64)
    rows: list[dict[str, Any]] = []
    for n in sizes:
        if n > len(ratings):
            continue
        for d in range(n_draws):
            s = draw_seed(seed, n, d)
            idx = draw_trials(len(ratings), n, s)
            x, y = np.asarray(data)[idx], ratings[idx]
            versions = [(False, y)]
            if null:
                versions.append((True, np.random.default_rng([s, 1]).permutation(y)))
            for is_null, yy in versions:
                k = min(folds, n)
                draw = Draw(x, yy, list(ch_names), sfreq, tmin, scale,
                            stratified_folds(yy, k, s), s)  # fmt: skip
                for row in score_draw(draw, estimators, p_threshold):
                    rows.append({"n_trials": n, "draw": d, "null": is_null, **row})
            if progress is not None:
                progress(n, d + 1)
    return rows
