"""Decodability of the hidden valence from simulated epochs: not trivial, and it follows the SNR.

100 labelled calibration images (the 50 of highest and the 50 of lowest hidden valence
for the subject, out of 300 procedural images), one epoch each from the brain model,
decoded by a cross-validated shrinkage-LDA on 0-1 s (the standard linear ERP classifier,
Blankertz et al. 2011). With the affect in full (``realism = "clean"``) balanced accuracy
must be 0.65-0.90 at the default SNR and rise with the SNR. The default realism
(``lab``) is calibrated against real recordings by ``eegs bench realism``
(tests/test_brain_realism.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from test_brain_model import make_images
from threadpoolctl import threadpool_limits

from models.brain.response import DEFAULT_SNR, BrainModel

SFREQ = 250.0
SUBJECT = 0
NOISE_SEED = 0


def balanced_accuracy(snr: float, pool: list, subject: int = SUBJECT) -> float:
    model = BrainModel(subject, sfreq=SFREQ, snr=snr, realism="clean")
    valence = np.array([model.affect(im)[0] for im in pool])
    order = np.argsort(valence)
    chosen = np.concatenate([order[:50], order[-50:]])
    labels = np.r_[np.zeros(50), np.ones(50)]
    shuffle = np.random.default_rng(0).permutation(100)  # presentation order
    chosen, labels = chosen[shuffle], labels[shuffle]
    epochs = model.simulate_epochs([pool[i] for i in chosen], tmin=-0.2, tmax=1.0, seed=NOISE_SEED)
    epochs = epochs - epochs[:, :, :50].mean(axis=2, keepdims=True)  # baseline -0.2..0 s
    # 0-1 s as ten 100 ms means per channel
    x = epochs[:, :, 50:300].reshape(100, epochs.shape[1], 10, 25).mean(axis=3).reshape(100, -1)
    clf = make_pipeline(
        StandardScaler(), LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    )
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(clf, x, labels, cv=cv, scoring="balanced_accuracy").mean())


@pytest.fixture(scope="module")
def pool() -> list:
    return make_images(300, seed=2)


def test_valence_is_decodable_realistically_and_rises_with_snr(pool):
    with threadpool_limits(1):
        curve = {
            snr: balanced_accuracy(snr, pool)
            for snr in (DEFAULT_SNR / 2, DEFAULT_SNR, 2 * DEFAULT_SNR)
        }
    print("balanced accuracy by SNR:", {k: round(v, 3) for k, v in curve.items()})
    low, default, high = curve.values()
    assert 0.65 <= default <= 0.90
    assert low < default < high


def test_labels_carry_the_information(pool):
    """Control: shuffled labels decode at chance, so the accuracy is not an artefact."""
    model = BrainModel(SUBJECT, sfreq=SFREQ, snr=2 * DEFAULT_SNR, realism="clean")
    with threadpool_limits(1):
        epochs = model.simulate_epochs(pool[:100], tmin=-0.2, tmax=1.0, seed=NOISE_SEED)
    epochs = epochs - epochs[:, :, :50].mean(axis=2, keepdims=True)
    x = epochs[:, :, 50:300].reshape(100, epochs.shape[1], 10, 25).mean(axis=3).reshape(100, -1)
    labels = np.random.default_rng(1).permutation(np.r_[np.zeros(50), np.ones(50)])
    clf = make_pipeline(
        StandardScaler(), LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    )
    with threadpool_limits(1):
        acc = cross_val_score(clf, x, labels, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                              scoring="balanced_accuracy").mean()  # fmt: skip
    assert acc < 0.65
