"""The personal estimator's model and its cross-validation with every permutation at once.

Model (:func:`candidate_model`, scikit-learn): one candidate per feature map of
:mod:`models.rewards.personal_features`, each a standardisation fitted on the training
trials and a ridge regression onto the ratings (:class:`EvidenceRidge`), and their
mean over the candidates that show signal (:class:`GatedMean`).

- The penalty (:class:`EvidenceRidge`): the leave-one-out error of the ratings over a
  grid of penalties (scikit-learn's ``RidgeCV``, exact) is compared, trial by trial,
  with the error of predicting each rating by the mean of the others. Where the best
  penalty beats that mean by more than ``min_t`` standard errors (a paired t over the
  trials; 1.645, the one-sided 5 % point), the data say that this map predicts, and
  that penalty is used. Otherwise the leave-one-out curve is flat and its minimum noise,
  and the penalty is the analytic Ledoit-Wolf shrinkage of the features' covariance
  (the shrinkage LDA's choice, Blankertz et al. 2011), which needs no ratings. On real
  faces/houses recordings the minimum of a flat curve lost up to 0.1 of r to the
  shrinkage at 48-200 trials; where a simulated participant's LPP carries valence, the
  shrinkage over-weighed noisy directions of 64 channels and lost 0.12-0.14 at 200-400
  trials to the leave-one-out penalty.
- The combination (:class:`GatedMean`): the mean of the predictions of the candidates
  whose leave-one-out error shows signal by the same test; when none does, the mean of
  the ``default`` candidates (the two readings of the evoked response: its strongest
  component and every channel's window means). The plain mean of all lost 0.1-0.2 of
  r where a single map carries the valence (the others' noise diluted it); a gate at
  one standard error or an all-candidate fallback let maps without signal in by chance
  at 48-96 trials.

The permutation test repeats all of it on each shuffle. For a fixed penalty each
candidate's prediction is linear in the ratings: test = training mean + S (ratings -
training mean), S depending on the epochs alone. So per fold one eigendecomposition
of each candidate's Gram matrix gives every penalty's leave-one-out errors and test
predictions for hundreds of shuffled rating vectors at once (:func:`fold_paths`), the
choices are made per shuffle (:func:`out_of_fold`), and the whole nested procedure
costs a few matrix products. The shuffles move ratings within folds
(:func:`within_fold_permutations`), which keeps the folds' stratification, so the test
is exact. ``tests/test_personal_reward.py`` checks this path against scikit-learn's
``cross_val_predict`` of :func:`candidate_model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone

#: Penalties searched by leave-one-out, relative to the mean eigenvalue of the trials'
#: Gram matrix (from almost none to a prediction that is nearly the mean).
PENALTY_GRID = tuple(float(a) for a in np.logspace(-3, 5, 25))
#: Paired t of the leave-one-out gain over the mean that counts as signal: one-sided 5 %.
MIN_T = 1.645
_MAX_SHRINKAGE = 1.0 - 1e-6


def ledoit_wolf_shrinkage(K: np.ndarray, n_features: int) -> float:
    """scikit-learn's ``ledoit_wolf_shrinkage`` of centred features, from their Gram matrix.

    The same estimator (``sklearn.covariance.ledoit_wolf_shrinkage(Z, assume_centered=
    True)`` for K = Z Z'), computed on the n x n matrix instead of the d x d one: a
    64-channel ERP map has more than 1000 features for a few hundred trials.
    """
    n = K.shape[0]
    if n_features == 1:
        return 0.0
    trace = float(np.trace(K)) / n  # trace of the covariance Z'Z / n
    mu = trace / n_features
    beta_ = float((np.diag(K) ** 2).sum())  # sum of the entries of (Z**2)' Z**2
    delta_ = float((K * K).sum()) / n**2  # sum of the squared entries of Z'Z / n
    beta = (beta_ / n - delta_) / (n_features * n)
    delta = (delta_ - 2.0 * mu * trace + n_features * mu**2) / n_features
    beta = min(beta, delta)
    return 0.0 if beta == 0 else beta / delta


def shrinkage_penalty(K: np.ndarray, n_features: int) -> float:
    """The ridge penalty of the Ledoit-Wolf shrunk covariance of centred features.

    ``K`` is their Gram matrix Z Z'. Ledoit-Wolf shrinks the sample covariance
    S = Z'Z / n towards mu I (mu its mean eigenvalue) by gamma; ridge regression with
    this penalty weighs the features' covariance exactly as (1 - gamma) S + gamma mu I:
    alpha = n gamma mu / (1 - gamma).
    """
    n = K.shape[0]
    mu = float(np.trace(K)) / (n * n_features)
    if mu <= 1e-300:
        return 1.0
    gamma = min(ledoit_wolf_shrinkage(K, n_features), _MAX_SHRINKAGE)
    return max(n * gamma * mu / (1.0 - gamma), 1e-12 * n * mu)


def penalty_grid(K: np.ndarray) -> np.ndarray:
    """:data:`PENALTY_GRID` in the units of the Gram matrix ``K`` (its mean eigenvalue)."""
    scale = max(float(np.trace(K)) / K.shape[0], 1e-12)
    return np.asarray(PENALTY_GRID) * scale


def signal_t(loo_sq: np.ndarray, null_sq: np.ndarray) -> np.ndarray:
    """Paired t over trials of the squared leave-one-out gain over the mean (per column)."""
    d = null_sq - loo_sq
    n = d.shape[0]
    sd = d.std(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = d.mean(axis=0) / (sd / np.sqrt(n))
    return np.where(sd > 0, t, 0.0)


def direction_t(z: np.ndarray, Y: np.ndarray, sign: float) -> np.ndarray:
    """The t of one feature's Pearson r with each column of ``Y``, in its known direction.

    For a training-free index whose direction is known before any rating (``sign``):
    its evidence is its correlation in that direction (one-sided), not a leave-one-out
    gain, which spends the trials on learning a direction already known.
    """
    r = sign * pearson_columns(np.asarray(z, dtype=np.float64)[:, None], Y)
    n = Y.shape[0]
    return r * np.sqrt((n - 2) / np.maximum(1.0 - r * r, 1e-12))


def null_errors(y: np.ndarray) -> np.ndarray:
    """Squared leave-one-out errors of predicting each rating by the mean of the others."""
    n = y.shape[0]
    return ((y - y.mean(axis=0)) * n / (n - 1)) ** 2


class EvidenceRidge(RegressorMixin, BaseEstimator):
    """Ridge regression whose penalty is its leave-one-out choice where that shows signal.

    Else the Ledoit-Wolf shrinkage penalty (module docstring). ``signal_t_`` is the
    paired t of the best penalty's leave-one-out gain over the mean, or, for one feature
    of known ``sign``, :func:`direction_t`.
    """

    def __init__(self, min_t: float = MIN_T, sign: float | None = None) -> None:
        self.min_t = min_t
        self.sign = sign

    def fit(self, X, y):
        """Fit on (n, d) features and n ratings."""
        from sklearn.linear_model import Ridge, RidgeCV

        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        Z = X - X.mean(0)
        K = Z @ Z.T
        alphas = penalty_grid(K)
        cv = RidgeCV(alphas=alphas, store_cv_results=True).fit(X, y)
        loo = cv.cv_results_  # (n, n_alphas) squared leave-one-out errors
        best = int(np.argmin(loo.mean(0)))
        if self.sign is None:
            self.signal_t_ = float(signal_t(loo[:, best], null_errors(y)))
        else:
            self.signal_t_ = float(direction_t(X[:, 0], y[:, None], self.sign)[0])
        self.signal_ = bool(self.signal_t_ > self.min_t)
        self.alpha_ = float(alphas[best]) if self.signal_ else shrinkage_penalty(K, X.shape[1])
        self.ridge_ = Ridge(alpha=self.alpha_).fit(X, y)
        self.coef_ = self.ridge_.coef_
        self.intercept_ = float(self.ridge_.intercept_)
        return self

    def predict(self, X):
        """Predicted ratings."""
        return self.ridge_.predict(X)


class GatedMean(RegressorMixin, BaseEstimator):
    """The mean of the candidates whose ridge shows signal; of the ``default`` when none does.

    ``default``: a flag per candidate (None: the first alone).
    """

    def __init__(
        self, estimators: Sequence[tuple[str, object]], default: Sequence[bool] | None = None
    ) -> None:
        self.estimators = estimators
        self.default = default

    def fit(self, X, y):
        """Fit every candidate, then weigh those with signal equally."""
        self.estimators_ = [clone(est).fit(X, y) for _, est in self.estimators]
        signal = np.asarray([est[-1].signal_ for est in self.estimators_], dtype=float)
        self.weights_ = gate_weights(signal[:, None], self.default)[:, 0]
        return self

    def predict(self, X):
        """The weighted mean of the candidates' predictions."""
        return sum(
            w * est.predict(X) for w, est in zip(self.weights_, self.estimators_, strict=True)
        )


def default_flags(default: Sequence[bool] | None, n: int) -> np.ndarray:
    """The candidates used when none shows signal, as 0/1 (None: the first alone)."""
    flags = np.zeros(n) if default is None else np.array(default, dtype=np.float64)
    if default is None or not flags.any():
        flags[0] = 1.0
    return flags


def gate_weights(signal: np.ndarray, default: Sequence[bool] | None = None) -> np.ndarray:
    """(candidates, P) weights: equal over those with signal, else over the default ones."""
    w = np.array(signal, dtype=np.float64)
    none = w.sum(0) == 0
    w[:, none] = default_flags(default, len(w))[:, None]
    return w / w.sum(0)


def candidate_model(
    blocks: Sequence[tuple[str, slice, bool, float | None]],
    min_t: float = MIN_T,
    default: Sequence[bool] | None = None,
):
    """The scikit-learn model: per block (name, its columns, standardise, sign), the gate.

    Blocks are column ranges of the stacked features of all maps; ``sign``: the known
    direction of a one-feature block, or None; ``default`` flags the candidates used when
    none shows signal.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return GatedMean(
        [
            (
                name,
                make_pipeline(
                    ColumnTransformer([("block", "passthrough", cols)]),
                    StandardScaler(with_std=std),
                    EvidenceRidge(min_t, sign),
                ),
            )
            for name, cols, std, sign in blocks
        ],
        default,
    )


def standardiser(F: np.ndarray, std: bool) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of ``F``'s columns as ``StandardScaler`` has them."""
    mean = F.mean(0)
    if not std:
        return mean, np.ones(F.shape[1])
    scale = F.std(0)
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
    return mean, scale


@dataclass
class Paths:
    """One candidate in one fold: for every penalty, the quantities linear in the ratings.

    ``V``, ``lam``: eigendecomposition of the centred training Gram matrix; ``A``: the
    test rows' kernel in that basis; ``alphas``: the grid, then the shrinkage penalty;
    ``z``, ``sign``: the training feature and its known direction (one-feature blocks
    with a sign only).
    """

    V: np.ndarray
    lam: np.ndarray
    A: np.ndarray
    alphas: np.ndarray
    z: np.ndarray | None = None
    sign: float | None = None


def candidate_paths(
    F_train: np.ndarray, F_test: np.ndarray, std: bool, sign: float | None = None
) -> Paths:
    """What :func:`evaluate` needs of one candidate in one fold (epochs only)."""
    mean, scale = standardiser(F_train, std)
    Z = (F_train - mean) / scale
    Zt = (F_test - mean) / scale
    mu = Z.mean(0)
    Z, Zt = Z - mu, Zt - mu
    K = Z @ Z.T
    lam, V = np.linalg.eigh(K)
    lam = np.clip(lam, 0.0, None)
    alphas = np.append(penalty_grid(K), shrinkage_penalty(K, Z.shape[1]))
    z = F_train[:, 0] if sign is not None else None
    return Paths(V, lam, (Zt @ Z.T) @ V, alphas, z, sign)


def evaluate(p: Paths, Y: np.ndarray, min_t: float = MIN_T) -> tuple[np.ndarray, np.ndarray]:
    """Test predictions (n_test, P) and signal flags (P,) of every rating column of ``Y``.

    Exactly :class:`EvidenceRidge` fitted on each column: leave-one-out errors of every
    penalty from the eigendecomposition (leverage 1/n + sum V^2 lam / (lam + alpha)).
    """
    n, P = Y.shape
    m = Y.mean(0)
    U = p.V.T @ (Y - m)
    V2 = p.V**2
    grid = p.alphas[:-1]
    loo = np.empty((len(grid), n, P))
    for i, a in enumerate(grid):
        resid = p.V @ ((a / (p.lam + a))[:, None] * U)
        h = 1.0 / n + V2 @ (p.lam / (p.lam + a))
        loo[i] = (resid / np.maximum(1.0 - h, 1e-12)[:, None]) ** 2
    best = loo.mean(1).argmin(0)  # (P,)
    cols = np.arange(P)
    if p.sign is None:
        signal = signal_t(loo[best, :, cols].T, null_errors(Y)) > min_t
    else:
        signal = direction_t(p.z, Y, p.sign) > min_t
    alpha = np.where(signal, grid[best], p.alphas[-1])  # (P,)
    pred = m + p.A @ (U / (p.lam[:, None] + alpha[None, :]))
    return pred, signal


@dataclass
class Fold:
    """One fold's test and training trials and each candidate's paths."""

    test: np.ndarray
    train: np.ndarray
    paths: list[Paths]


def fold_paths(
    blocks: Sequence[tuple[np.ndarray, bool, float | None]], folds: np.ndarray
) -> list[Fold]:
    """Each fold's paths, for blocks (features (n, d), standardise, known sign or None)."""
    out = []
    for f in np.unique(folds):
        test, train = np.flatnonzero(folds == f), np.flatnonzero(folds != f)
        paths = [candidate_paths(F[train], F[test], s, sign) for F, s, sign in blocks]
        out.append(Fold(test, train, paths))
    return out


def out_of_fold(
    folds: Sequence[Fold],
    Y: np.ndarray,
    candidate: int | None = None,
    min_t: float = MIN_T,
    default: Sequence[bool] | None = None,
) -> np.ndarray:
    """Out-of-fold predictions of every column of ``Y`` (n, P): the gate, or one candidate.

    ``default`` as :class:`GatedMean`'s.
    """
    out = np.empty(Y.shape, dtype=np.float64)
    for fold in folds:
        Yt = Y[fold.train]
        if candidate is not None:
            out[fold.test] = evaluate(fold.paths[candidate], Yt, min_t)[0]
            continue
        preds, signal = zip(*(evaluate(p, Yt, min_t) for p in fold.paths), strict=True)
        w = gate_weights(np.asarray(signal, dtype=np.float64), default)
        out[fold.test] = np.einsum("cp,ctp->tp", w, np.asarray(preds))
    return out


def within_fold_permutations(folds: np.ndarray, n_perm: int, rng: np.random.Generator):
    """(n_perm, n) trial orders, each shuffling the trials within each fold."""
    n = len(folds)
    index = np.tile(np.arange(n), (n_perm, 1))
    for f in np.unique(folds):
        members = np.flatnonzero(folds == f)
        shuffled = rng.permuted(np.tile(np.arange(len(members)), (n_perm, 1)), axis=1)
        index[:, members] = members[shuffled]
    return index


def pearson_columns(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Pearson r of each column of ``A`` with the same column of ``B``; 0 when constant."""
    A = A - A.mean(0)
    B = B - B.mean(0)
    den = np.sqrt((A * A).sum(0) * (B * B).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (A * B).sum(0) / den
    return np.where(den > 1e-12, r, 0.0)
