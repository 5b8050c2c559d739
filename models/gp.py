"""The GP surrogate of the heuristic generator: reward as a function of image embedding.

An exact Gaussian process with a constant mean and a scaled RBF kernel with one
lengthscale per embedding dimension (ARD). Hyperparameters are fitted with gpytorch
(Adam on the exact marginal likelihood) under a bounded budget of iterations and
seconds, warm-started from the previous fit. Between fits, new observations are added
by extending the Cholesky factor of the kernel matrix with the current hyperparameters
(O(n^2 m) for m new points instead of O(n^3)), which is what keeps a round's update
plus gradient within milliseconds. The posterior mean and its gradient are computed in
closed form from the cached weights ``alpha = (K + s2 I)^-1 (y - c)``, in numpy/scipy
(small matrices: no thread-pool start-up per operation, unlike torch on a busy CPU):

    mu(x)      = c + k(x, X) alpha
    d mu / dx  = sum_i alpha_i k(x, x_i) (x_i - x) / l^2
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import gpytorch
import numpy as np
import torch
from scipy.linalg import cho_solve, solve_triangular
from threadpoolctl import ThreadpoolController

_DTYPE = torch.float64
_THREADPOOLS = ThreadpoolController()


def _one_blas_thread(method):
    """Run a small linear-algebra method on one BLAS thread.

    Matrices here are at most a few hundred rows: a multi-threaded BLAS gains nothing
    and, on a CPU shared with other processes, loses tens of milliseconds per call
    to thread hand-offs.
    """

    def wrapper(*args, **kwargs):
        with _THREADPOOLS.limit(limits=1, user_api="blas"):
            return method(*args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


@dataclass(frozen=True)
class Hyperparameters:
    """Fitted kernel and likelihood values, in the standardised target scale."""

    constant: float
    outputscale: float
    lengthscale: np.ndarray  # (dim,)
    noise: float


class _ExactGP(gpytorch.models.ExactGP):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, likelihood, dim: int) -> None:
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(
            gpytorch.kernels.RBFKernel(ard_num_dims=dim)
        )

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


class GPSurrogate:
    """Exact GP on (embedding, value) pairs with a cheap incremental update.

    Parameters
    ----------
    lr
        Adam learning rate of the hyperparameter fit.
    noise_min
        Lower bound of the noise variance (standardised units), which keeps the
        Cholesky factorisation well conditioned when two embeddings coincide.
    """

    def __init__(self, lr: float = 0.05, noise_min: float = 1e-4) -> None:
        self.lr = lr
        self.noise_min = noise_min
        self.X = np.empty((0, 0))
        self.y = np.empty(0)  # raw targets
        self._model: _ExactGP | None = None
        self._y_loc = 0.0
        self._y_scale = 1.0
        self._hp: Hyperparameters | None = None
        self._L: np.ndarray | None = None  # lower Cholesky factor of K + noise I
        self._alpha: np.ndarray | None = None
        self._Xs = np.empty((0, 0))  # X / lengthscale, cached for the kernel
        self._sq = np.empty(0)  # squared row norms of _Xs
        self.n_fit_iters = 0

    # -- state -------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of observations."""
        return int(self.y.shape[0])

    @property
    def fitted(self) -> bool:
        """True once hyperparameters exist (after the first :meth:`fit`)."""
        return self._hp is not None

    @property
    def hyperparameters(self) -> Hyperparameters | None:
        """The hyperparameters in use."""
        return self._hp

    # -- fitting -----------------------------------------------------------------------
    def fit(
        self,
        X: np.ndarray | None = None,
        y: np.ndarray | None = None,
        *,
        iters: int = 100,
        budget_s: float = math.inf,
        should_stop=lambda: False,
        threads: int = 0,
    ) -> GPSurrogate:
        """(Re)fit hyperparameters, warm-started from the previous fit.

        Parameters
        ----------
        X, y
            All observations (replacing the current ones); ``None`` keeps them.
        iters, budget_s
            Adam iterations and a wall-time cap, whichever ends first.
        should_stop
            Polled between iterations so that a refit in idle time yields at once
            to a request.
        threads
            torch threads during the fit (0 = leave torch's setting); 1 avoids
            thread hand-offs that dominate small matrices on a busy CPU.
        """
        previous = torch.get_num_threads()
        if threads > 0:
            torch.set_num_threads(threads)
        try:
            return self._fit(X, y, iters, budget_s, should_stop)
        finally:
            torch.set_num_threads(previous)

    def _fit(self, X, y, iters: int, budget_s: float, should_stop) -> GPSurrogate:
        if X is not None:
            self._set_data(np.asarray(X), np.asarray(y))
        if self.n == 0:
            raise ValueError("cannot fit a GP without observations")
        y_loc = float(self.y.mean())
        y_scale = float(self.y.std(ddof=1)) if self.n > 1 else 1.0
        self._y_loc, self._y_scale = y_loc, (y_scale if y_scale > 1e-12 else 1.0)
        X = torch.as_tensor(self.X, dtype=_DTYPE)
        ys = torch.as_tensor((self.y - self._y_loc) / self._y_scale, dtype=_DTYPE)
        dim = self.X.shape[1]
        if self._model is None or self._model.covar_module.base_kernel.ard_num_dims != dim:
            likelihood = gpytorch.likelihoods.GaussianLikelihood(
                noise_constraint=gpytorch.constraints.GreaterThan(self.noise_min)
            ).to(_DTYPE)
            self._model = _ExactGP(X, ys, likelihood, dim).to(_DTYPE)
            self._model.covar_module.base_kernel.lengthscale = _median_distance(self.X)
            self._model.likelihood.noise = max(0.1, 2.0 * self.noise_min)  # inside its bound
        else:
            self._model.set_train_data(X, ys, strict=False)
        model = self._model
        model.train()
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        start = time.perf_counter()
        for _ in range(iters):
            if time.perf_counter() - start > budget_s or should_stop():
                break
            opt.zero_grad()
            loss = -mll(model(X), ys)
            loss.backward()
            opt.step()
            self.n_fit_iters += 1
        model.eval()
        with torch.no_grad():
            self._hp = Hyperparameters(
                constant=float(model.mean_module.constant),
                outputscale=float(model.covar_module.outputscale),
                lengthscale=model.covar_module.base_kernel.lengthscale.detach()
                .reshape(-1)
                .numpy()
                .copy(),
                noise=float(model.likelihood.noise),
            )
        self._refactor()
        return self

    @_one_blas_thread
    def add(self, X_new: np.ndarray, y_new: np.ndarray) -> GPSurrogate:
        """Add observations with the current hyperparameters (block Cholesky update).

        Before the first :meth:`fit` this only stores the points.
        """
        X_new = np.atleast_2d(np.asarray(X_new, dtype=np.float64))
        y_new = np.atleast_1d(np.asarray(y_new, dtype=np.float64)).reshape(-1)
        if X_new.shape[0] != y_new.shape[0]:
            raise ValueError(f"{X_new.shape[0]} embeddings but {y_new.shape[0]} values")
        if X_new.shape[0] == 0:
            return self
        if self.n and X_new.shape[1] != self.X.shape[1]:
            raise ValueError(f"embedding of dim {X_new.shape[1]}, the GP has {self.X.shape[1]}")
        old_X = self.X
        self.X = X_new.copy() if self.n == 0 else np.concatenate([self.X, X_new])
        self.y = np.concatenate([self.y, y_new])
        if self._hp is None:
            return self
        if self._L is None or old_X.shape[0] == 0:
            self._refactor()
            return self
        k_on = self._kernel(X_new).T  # (n, m), before the cache grows
        k_nn = self._kernel(X_new, X_new) + self._hp.noise * np.eye(X_new.shape[0])
        xs = X_new / self._hp.lengthscale
        self._Xs = np.concatenate([self._Xs, xs])
        self._sq = np.concatenate([self._sq, (xs * xs).sum(1)])
        B = solve_triangular(self._L, k_on, lower=True, check_finite=False)  # (n, m)
        try:
            C = np.linalg.cholesky(k_nn - B.T @ B)
        except np.linalg.LinAlgError:
            self._refactor()
            return self
        n, m = old_X.shape[0], X_new.shape[0]
        L = np.zeros((n + m, n + m))
        L[:n, :n] = self._L
        L[n:, :n] = B.T
        L[n:, n:] = C
        self._L = L
        self._solve_alpha()
        return self

    def replace(self, X: np.ndarray, y: np.ndarray) -> GPSurrogate:
        """Swap the observations and keep the hyperparameters: one factorisation, no fit."""
        self._set_data(np.asarray(X), np.asarray(y))
        if self._hp is not None:
            self._refactor()
        return self

    def _set_data(self, X: np.ndarray, y: np.ndarray) -> None:
        if X.ndim != 2 or y.reshape(-1).shape[0] != X.shape[0]:
            raise ValueError(f"X must be (n, dim) and y (n,); got {X.shape} and {y.shape}")
        self.X = np.array(X, dtype=np.float64)
        self.y = np.array(y, dtype=np.float64).reshape(-1)

    # -- prediction --------------------------------------------------------------------
    def _kernel(self, A: np.ndarray, B: np.ndarray | None = None) -> np.ndarray:
        """k(A, B); ``B = None`` means the observations (from the scaled cache)."""
        ls = self._hp.lengthscale
        a = A / ls
        if B is None:
            b, b_sq = self._Xs, self._sq
        else:
            b = B / ls
            b_sq = (b * b).sum(1)
        sq = (a * a).sum(1)[:, None] + b_sq[None, :] - 2.0 * a @ b.T
        return self._hp.outputscale * np.exp(-0.5 * np.maximum(sq, 0.0))

    @_one_blas_thread
    def _refactor(self) -> None:
        """Cholesky of K + noise I from scratch (after a fit)."""
        self._Xs = self.X / self._hp.lengthscale
        self._sq = (self._Xs * self._Xs).sum(1)
        K = self._kernel(self.X)
        K[np.diag_indices_from(K)] += self._hp.noise
        jitter = 1e-8
        for _ in range(8):
            try:
                self._L = np.linalg.cholesky(K)
                break
            except np.linalg.LinAlgError:
                K[np.diag_indices_from(K)] += jitter
                jitter *= 10
        else:
            raise np.linalg.LinAlgError("kernel matrix is not positive definite")
        self._solve_alpha()

    def _solve_alpha(self) -> None:
        ys = (self.y - self._y_loc) / self._y_scale - self._hp.constant
        self._alpha = cho_solve((self._L, True), ys, check_finite=False)

    def _check_ready(self, Xq: np.ndarray) -> np.ndarray:
        if self._hp is None:
            raise RuntimeError("the GP has not been fitted yet")
        Xq = np.atleast_2d(np.asarray(Xq, dtype=np.float64))
        if Xq.shape[1] != self.X.shape[1]:
            raise ValueError(f"query of dim {Xq.shape[1]}, the GP has {self.X.shape[1]}")
        return Xq

    @_one_blas_thread
    def mean(self, Xq: np.ndarray) -> np.ndarray:
        """Posterior mean at the query embeddings, in the units of ``y``."""
        Xq = self._check_ready(Xq)
        mu = self._hp.constant + self._kernel(Xq) @ self._alpha
        return mu * self._y_scale + self._y_loc

    @_one_blas_thread
    def mean_grad(self, Xq: np.ndarray) -> np.ndarray:
        """Gradient of the posterior mean at each query embedding, shape (m, dim)."""
        Xq = self._check_ready(Xq)
        w = self._kernel(Xq) * self._alpha[None, :]  # (m, n): alpha_i k(x, x_i)
        grad = (w @ self.X - w.sum(1, keepdims=True) * Xq) / self._hp.lengthscale**2
        return grad * self._y_scale

    def summary(self) -> dict[str, float | int]:
        """The fit in a few numbers a person can read (standardised reward units).

        ``signal_to_noise`` = outputscale / noise: near or below 1, the GP mostly sees
        noise, and its gradient steers the children little.
        """
        out: dict[str, float | int] = {"n_points": self.n}
        hp = self._hp
        if hp is not None:
            out.update(
                outputscale=round(hp.outputscale, 4),
                noise=round(hp.noise, 4),
                signal_to_noise=round(hp.outputscale / hp.noise, 3),
                lengthscale_median=round(float(np.median(hp.lengthscale)), 4),
            )
        return out

    def median_distance(self) -> float:
        """Median pairwise distance between observed embeddings (a natural length unit)."""
        return _median_distance(self.X) if self.n > 1 else 1.0


def warm_up(dim: int, threads: int = 1) -> float:
    """Pay the process's first-call costs of a fit and a prediction now; returns seconds.

    The first gpytorch fit in a process costs seconds more than any later one (torch's
    autograd engine and thread pools, linear_operator's first dispatches, lazy imports):
    1.9 s more on a busy 2-core CPU, against 0.3 s for a whole 100-iteration fit of 56
    points once warm. A worker calls this before it serves, so that the surrogate's
    first real fit, in a round or in idle time, costs only its own iterations.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, max(1, dim)))
    gp = GPSurrogate().fit(X, rng.normal(size=8), iters=2, threads=threads)
    gp.mean_grad(X[:2])
    gp.mean(X[:2])
    gp.add(X[:1] + 0.5, np.zeros(1))
    gp.replace(X, rng.normal(size=8))
    return time.perf_counter() - t0


def _median_distance(X: np.ndarray) -> float:
    if X.shape[0] < 2:
        return 1.0
    idx = np.random.default_rng(0).permutation(X.shape[0])[:256]
    sub = X[idx]
    sq = (sub * sub).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * sub @ sub.T
    vals = np.sqrt(np.maximum(d2[np.triu_indices(len(idx), 1)], 0.0))
    med = float(np.median(vals)) if vals.size else 1.0
    return med if med > 1e-12 else 1.0
