"""The GP surrogate: closed-form gradient, incremental update, bounded warm-started fit."""

from __future__ import annotations

import numpy as np
import pytest

from models.gp import GPSurrogate


def _data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = rng.normal(size=d) / np.sqrt(d)
    y = np.sin(2 * X @ w) + 0.05 * rng.normal(size=n)
    return X, y


def test_mean_gradient_matches_finite_differences():
    X, y = _data(40, 12)
    gp = GPSurrogate().fit(X, y, iters=30)
    rng = np.random.default_rng(1)
    Q = X[:3] + 0.3 * rng.normal(size=(3, 12))
    grad = gp.mean_grad(Q)
    eps = 1e-5
    fd = np.zeros_like(Q)
    for j in range(Q.shape[1]):
        e = np.zeros(Q.shape[1])
        e[j] = eps
        fd[:, j] = (gp.mean(Q + e) - gp.mean(Q - e)) / (2 * eps)
    assert np.abs(grad).max() > 1e-3  # a real, non-trivial gradient
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


def test_incremental_add_equals_refactoring_from_scratch():
    X, y = _data(60, 8)
    gp = GPSurrogate().fit(X[:50], y[:50], iters=20)
    gp.add(X[50:], y[50:])
    ref = GPSurrogate().fit(X[:50], y[:50], iters=20)
    ref.X, ref.y = gp.X.copy(), gp.y.copy()
    ref._refactor()  # same hyperparameters, all 60 points, full Cholesky
    Q = np.random.default_rng(2).normal(size=(5, 8))
    np.testing.assert_allclose(gp.mean(Q), ref.mean(Q), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gp.mean_grad(Q), ref.mean_grad(Q), rtol=1e-7, atol=1e-10)
    assert gp.n == 60


def test_fit_predicts_held_out_points():
    X, y = _data(120, 6, seed=3)
    gp = GPSurrogate().fit(X[:100], y[:100], iters=60)
    r = np.corrcoef(gp.mean(X[100:]), y[100:])[0, 1]
    assert r > 0.8


@pytest.mark.parametrize("noise_min", [0.05, 0.5, 2.0])
def test_a_noise_floor_above_the_first_guess_is_kept(noise_min):
    X, y = _data(40, 4, seed=5)
    gp = GPSurrogate(noise_min=noise_min).fit(X, y, iters=20)
    assert gp.hyperparameters.noise >= noise_min
    assert np.isfinite(gp.mean(X)).all()


def test_fit_budget_is_bounded_and_warm_started():
    X, y = _data(30, 5)
    gp = GPSurrogate().fit(X, y, iters=7)
    assert gp.n_fit_iters == 7
    ls = gp.hyperparameters.lengthscale.copy()
    gp.fit(iters=5, budget_s=0.0)  # no time: hyperparameters stay as they were
    assert gp.n_fit_iters == 7
    np.testing.assert_allclose(gp.hyperparameters.lengthscale, ls)
    gp.fit(iters=3, should_stop=lambda: True)
    assert gp.n_fit_iters == 7
    gp.add(X[:2] + 0.01, y[:2])
    gp.fit(iters=4)  # continues from the previous values, on all 32 points
    assert gp.n_fit_iters == 11
    assert gp.n == 32


def test_bad_inputs_are_refused():
    gp = GPSurrogate()
    with pytest.raises(RuntimeError, match="not been fitted"):
        gp.mean(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="without observations"):
        gp.fit()
    X, y = _data(10, 3)
    gp.fit(X, y, iters=2)
    with pytest.raises(ValueError, match="dim"):
        gp.mean_grad(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="values"):
        gp.add(np.zeros((2, 3)), np.zeros(3))


def test_replace_keeps_the_hyperparameters_and_refactors_the_new_set():
    X, y = _data(60, 8)
    gp = GPSurrogate().fit(X[:40], y[:40], iters=20)
    hp = gp.hyperparameters
    gp.replace(X[20:], y[20:])
    assert gp.n == 40
    assert gp.hyperparameters is hp
    ref = GPSurrogate().fit(X[:40], y[:40], iters=20)
    ref.X, ref.y = X[20:].copy(), y[20:].copy()
    ref._refactor()
    Q = np.random.default_rng(4).normal(size=(5, 8))
    np.testing.assert_allclose(gp.mean(Q), ref.mean(Q), rtol=1e-8, atol=1e-10)
    # the points that left no longer pull the mean: it differs from the 40-point fit
    assert not np.allclose(gp.mean(Q), GPSurrogate().fit(X[:40], y[:40], iters=20).mean(Q))


def test_summary_tells_a_signal_from_noise():
    X, y = _data(80, 4, seed=5)
    signal = GPSurrogate().fit(X, y, iters=150).summary()
    noise = GPSurrogate().fit(X, np.random.default_rng(6).normal(size=80), iters=150).summary()
    assert signal["n_points"] == noise["n_points"] == 80
    assert signal["signal_to_noise"] > 10 * noise["signal_to_noise"]
    assert GPSurrogate().summary() == {"n_points": 0}
