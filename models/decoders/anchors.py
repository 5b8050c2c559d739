"""Textbook single-trial decoders that the personal estimator is judged against.

``eegs bench estimator`` measures the session's personal estimator beside three anchors
that any EEG lab would try first on a participant's own trials, on the same draws and
the same folds:

- ``lda``: shrinkage LDA on baseline-corrected window means per channel (Blankertz et al.
  2011, NeuroImage 56:814-825): 50 ms windows from 0.05 to 0.80 s (those inside the
  epoch), Ledoit-Wolf shrinkage (scikit-learn's ``solver="lsqr", shrinkage="auto"``);
- ``xdawn_ts``: xDAWN covariances (2 filters per class, Ledoit-Wolf covariances) in the
  Riemannian tangent space, then logistic regression: the MOABB ERP baseline (pyRiemann's
  ``XdawnCovariances`` + ``TangentSpace``), on the post-stimulus samples;
- ``faa``: the frontal alpha asymmetry index, training free (the personal reward's
  fallback, :class:`models.rewards.asymmetry.AsymmetryReward`), over the homologous frontal
  pairs the epochs hold.

The two trained anchors are classifiers: they learn the ratings split at the median
(:func:`median_split`) and their continuous output (the decision function) is what is
scored against the ratings. Each returns out-of-fold outputs for given folds
(:func:`anchor_oof`); ``faa`` fits nothing, so its output is the same with any folds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ANCHORS = ("lda", "xdawn_ts", "faa")
#: LDA anchor windows: 50 ms from 0.05 s to 0.80 s.
LDA_WINDOWS_S: tuple[tuple[float, float], ...] = tuple(
    (round(0.05 + 0.05 * i, 3), round(0.10 + 0.05 * i, 3)) for i in range(15)
)
XDAWN_FILTERS = 2


class AnchorError(ValueError):
    """Epochs an anchor cannot read (no window inside them, no frontal pair...)."""


def median_split(y: np.ndarray) -> np.ndarray:
    """Ratings as two classes: above the median (1) or not (0).

    When every rating above the minimum ties at the median (two-valued ratings such as
    faces 7, houses 3), the split is at the minimum instead, so that both classes exist
    whenever the ratings vary.
    """
    y = np.asarray(y, dtype=np.float64)
    high = y > np.median(y)
    if not high.any() or high.all():
        high = y > y.min()
    return high.astype(int)


def window_means(
    data: np.ndarray, sfreq: float, tmin: float, windows_s: Sequence[tuple[float, float]]
) -> np.ndarray:
    """(n, n_channels * n_windows) mean amplitudes, channel-major, baseline-corrected.

    The baseline is every sample before 0 s; windows not inside the epoch are left out.
    """
    x = np.asarray(data, dtype=np.float64)
    n_times = x.shape[-1]

    def sample(t: float) -> int:
        return int(round((t - tmin) * sfreq))

    if sample(0.0) > 0:
        x = x - x[..., : sample(0.0)].mean(-1, keepdims=True)
    spans = [
        (sample(a), sample(b))
        for a, b in windows_s
        if sample(a) >= 0 and sample(b) <= n_times and sample(b) > sample(a)
    ]
    if not spans:
        raise AnchorError(
            f"none of the windows {list(windows_s)[:3]}... s is inside the epochs "
            f"({tmin:g} s, {n_times} samples at {sfreq:g} Hz)"
        )
    return np.stack([x[..., a:b].mean(-1) for a, b in spans], axis=-1).reshape(len(x), -1)


def post_stimulus(data: np.ndarray, sfreq: float, tmin: float) -> np.ndarray:
    """The samples from 0 s on."""
    return np.asarray(data)[..., max(int(round(-tmin * sfreq)), 0) :]


def lda_pipeline():
    """Shrinkage LDA (Ledoit-Wolf), scikit-learn."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    return LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")


def xdawn_ts_pipeline():
    """The MOABB ERP baseline: xDAWN covariances, tangent space, logistic regression."""
    from pyriemann.estimation import XdawnCovariances
    from pyriemann.tangentspace import TangentSpace
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        XdawnCovariances(nfilter=XDAWN_FILTERS, estimator="lwf", xdawn_estimator="scm"),
        TangentSpace(metric="riemann"),
        LogisticRegression(max_iter=1000),
    )


def anchor_oof(
    name: str,
    data: np.ndarray,
    ratings: np.ndarray,
    folds: np.ndarray,
    ch_names: Sequence[str],
    sfreq: float,
    tmin: float,
    index=None,
) -> np.ndarray:
    """Out-of-fold continuous output of anchor ``name`` on epochs ``data`` (n, ch, times).

    ``folds`` gives each trial's fold; ``index`` is the ``faa`` anchor's reward function
    (default: :func:`frontal_asymmetry_index` of the channel names).
    """
    if name == "faa":
        return faa_values(data, ch_names, sfreq, tmin, index)
    if name == "lda":
        features, make = window_means(data, sfreq, tmin, LDA_WINDOWS_S), lda_pipeline
    elif name == "xdawn_ts":
        features, make = post_stimulus(data, sfreq, tmin).astype(np.float64), xdawn_ts_pipeline
    else:
        raise AnchorError(f"unknown anchor {name!r}; expected one of {ANCHORS}")
    labels = median_split(ratings)
    out = np.empty(len(labels))
    for f in np.unique(folds):
        test = folds == f
        if len(np.unique(labels[~test])) < 2:  # a training set of one class learns nothing
            out[test] = 0.0
            continue
        model = make().fit(features[~test], labels[~test])
        out[test] = model.decision_function(features[test])
    return out


def frontal_asymmetry_index(ch_names: Sequence[str]):
    """The asymmetry reward over the homologous frontal pairs found in ``ch_names``."""
    from models.montage import homologous_pairs
    from models.rewards.asymmetry import AsymmetryReward

    pairs = homologous_pairs(ch_names)
    if not pairs:
        raise AnchorError(f"no homologous frontal pair (such as F3/F4) in {list(ch_names)[:8]}")
    return AsymmetryReward(pairs, (8.0, 13.0), (0.3, 1.0), 0.5)


def faa_values(data, ch_names, sfreq, tmin, index=None) -> np.ndarray:
    """The asymmetry index's log-power difference of every epoch (training free)."""
    index = index or frontal_asymmetry_index(ch_names)
    return index.asymmetry(data, ch_names, sfreq, tmin)
