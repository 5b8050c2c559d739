"""The heuristic generator: evolves image embeddings towards higher EEG reward.

docs/architecture.md section 3, after the lab prototype. Round 0 is a random sample of the
stimulus pool, even when earlier rewards exist (a calibration block's: they go into the
GP and may be parents from round 1 on), so that the loop's gain is measured from it.
Each later round:

1. parents: sample ``n_parents`` shown images without replacement, with probability
   softmax(score / temperature), the score being the GP's posterior mean at the image,
   spread like the rewards (``parent_score = "posterior"``, the default), or the
   image's single-trial reward (``"reward"``, the prototype);
2. crossover: each pair of parents swaps one random contiguous slice of their
   embeddings, giving two children;
3. refinement, ``inner_steps`` times for all children at once: move each embedding up
   the gradient of the GP surrogate's posterior mean with step
   ``eta_k = eta_0 / (1 + decay * k)`` (norm capped by the trust region). With
   ``refine_in = "render"`` (the prototype) every step generates the images in ONE
   batched backend call (fixed noise seed per child) and re-embeds them, so that each
   step starts from the embedding of an image that exists; with ``"embedding"`` the
   steps stay in embedding space and the images are generated (one batched call) and
   re-embedded once, after the last step;
4. exploration: the unseen pool images nearest to the parents, and random unseen ones.

The shown images' rewards are added to the GP (fitted on -reward when the protocol
says so, as the prototype did; the ascent direction is the same). A run stops after
``max_rounds`` or when the best reward has not improved by ``tolerance`` for
``patience`` rounds. A selection-only backend (``pool``) refines in embedding space and
shows the nearest unseen pool image instead of generating.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from models.backends.base import Backend
from models.backends.pool import ImagePool
from models.gp import GPSurrogate


@dataclass
class Candidate:
    """One image of a batch, with what made it."""

    kind: str  # "initial" | "child" | "nearest" | "random"
    image: Image.Image
    embedding: np.ndarray
    seed: int | None = None
    parents: list[str] = field(default_factory=list)
    pool_id: str | None = None
    inner_steps: int = 0
    crossover: tuple[int, int] | None = None
    conditioning: np.ndarray | None = None  # the embedding the image was generated from


@dataclass
class RoundTiming:
    """Seconds spent per stage of the last round."""

    gp_update: float = 0.0
    gp_gradient: float = 0.0
    generate: float = 0.0
    embed: float = 0.0
    select: float = 0.0

    def as_ms(self) -> dict[str, float]:
        """Milliseconds, rounded, for messages and logs."""
        return {f"{k}_ms": round(v * 1e3, 3) for k, v in self.__dict__.items()}


def softmax(x: np.ndarray, temperature: float) -> np.ndarray:
    """Numerically stable softmax(x / temperature)."""
    z = np.asarray(x, dtype=np.float64) / temperature
    z -= z.max()
    p = np.exp(z)
    return p / p.sum()


def _spread_like(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``values`` moved and scaled to the mean and SD of ``reference``, ranks kept.

    The GP's posterior mean shrinks towards its constant by as much as the rewards are
    noisy: over single-trial EEG rewards its spread is a fraction of theirs, and a
    softmax at the rewards' temperature over it picks parents nearly at random.
    Spread like the rewards, it ranks them by the denoised estimate with the
    greediness the temperature sets for rewards.
    """
    sd = float(np.std(values))
    if sd < 1e-12:
        return np.full_like(values, float(np.mean(reference)))
    return np.mean(reference) + (values - np.mean(values)) / sd * float(np.std(reference))


def crossover(
    a: np.ndarray, b: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Swap one random contiguous slice between two embeddings; returns both children."""
    d = a.shape[0]
    length = int(rng.integers(1, d)) if d > 1 else 1
    start = int(rng.integers(0, d - length + 1))
    c1, c2 = a.copy(), b.copy()
    c1[start : start + length] = b[start : start + length]
    c2[start : start + length] = a[start : start + length]
    return c1, c2, (start, start + length)


class HeuristicGenerator:
    """State and steps of the closed-loop optimiser (pure computation, no I/O).

    Parameters
    ----------
    heuristic, gp_settings
        The protocol's ``generation.heuristic`` and ``generation.gp`` sections.
    backend
        Embedding space <-> images.
    pool
        Stimulus pool in the backend's embedding space (round 0 and exploration).
    seed
        Seeds parent sampling, crossover, exploration and noise seeds.
    """

    def __init__(self, heuristic, gp_settings, backend: Backend, pool: ImagePool, seed: int = 0):
        self.h = heuristic
        self.gp_settings = gp_settings
        self.backend = backend
        self.pool = pool
        self.rng = np.random.default_rng(seed)
        self.gp = GPSurrogate(lr=gp_settings.lr, noise_min=gp_settings.noise_min)
        self.ids: list[str] = []
        self.embeddings: list[np.ndarray] = []
        self.rewards: list[float] = []  # per image: the mean of its rewards
        self.n_rewards: list[int] = []  # per image: the rewards averaged
        self._index: dict[str, int] = {}  # image id -> its observation
        self.issued: set[str] = set()
        self._in_gp = 0
        self._changed = False  # an observation the GP holds has a new mean
        #: Adam iterations a cut-short first fit still owes (run by :meth:`refit`).
        self.fit_iters_owed = 0
        self.round = 0
        self.best_by_round: list[float] = []
        self.timing = RoundTiming()

    # -- observations ----------------------------------------------------------------
    def observe(self, image_id: str, embedding: np.ndarray, reward: float) -> None:
        """Record the reward of a shown image.

        An image shown again (``presentations`` > 1, a reshown trial) stays one
        observation holding the mean of its rewards: the GP sees each image once, with
        its noise averaged down, and no image can be drawn as both parents of a pair.
        """
        k = self._index.get(image_id)
        if k is not None:
            self.n_rewards[k] += 1
            self.rewards[k] += (float(reward) - self.rewards[k]) / self.n_rewards[k]
            self._changed = self._changed or k < self._in_gp
            return
        self._index[image_id] = len(self.ids)
        self.ids.append(image_id)
        self.embeddings.append(np.asarray(embedding, dtype=np.float64).reshape(-1))
        self.rewards.append(float(reward))
        self.n_rewards.append(1)

    def mark_issued(self, pool_ids: list[str]) -> None:
        """Pool images already handed out, never to be explored again."""
        self.issued.update(pool_ids)

    @property
    def n_observations(self) -> int:
        """Rewarded images so far."""
        return len(self.rewards)

    def _gp_targets(self, rewards: list[float]) -> np.ndarray:
        y = np.asarray(rewards, dtype=np.float64)
        return -y if self.gp_settings.negate_reward else y

    def gp_indices(self) -> np.ndarray:
        """Observations the GP holds: all, or past ``gp.max_points`` the best and the newest.

        An exact GP's memory and fit time grow with n^2, so an hour-long session would
        slow every round and grow the worker without bound. Past the cap the GP keeps
        the quarter with the highest rewards (the parents' neighbourhoods, whose
        gradient refines the children) and fills the rest with the newest (a
        participant's responses drift over a session).
        """
        n, cap = self.n_observations, self.gp_settings.max_points
        if n <= cap:
            return np.arange(n)
        best = np.argsort(-np.asarray(self.rewards), kind="stable")[: cap // 4]
        rest = np.setdiff1d(np.arange(n), best)[::-1][: cap - best.size]
        return np.sort(np.concatenate([best, rest]))

    def update_surrogate(self, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Bring the GP up to date: the first fit, then cheap incremental additions.

        Returns the Adam iterations run (the first fit's; 0 otherwise). A first fit that
        ``should_stop()`` cut short leaves the GP usable (its hyperparameters as far as
        they got) and owes the rest of its iterations to :meth:`refit`.
        """
        t0 = time.perf_counter()
        n = self.n_observations
        iters = 0
        if n and not self.gp.fitted:
            keep = self.gp_indices()
            before = self.gp.n_fit_iters
            self.gp.fit(
                np.stack([self.embeddings[i] for i in keep]),
                self._gp_targets([self.rewards[i] for i in keep]),
                iters=self.gp_settings.fit_iters,
                budget_s=self.gp_settings.refit_budget_s,
                should_stop=should_stop,
                threads=self.gp_settings.threads,
            )
            iters = self.gp.n_fit_iters - before
            # cut short to make way (not by its budget): the rest is owed to idle time
            owed = self.gp_settings.fit_iters - iters if should_stop() else 0
            self.fit_iters_owed = max(0, owed)
        elif (n > self.gp_settings.max_points and n > self._in_gp) or self._changed:
            # the window moved, or an image's mean changed: one factorisation of the kept set
            keep = self.gp_indices()
            self.gp.replace(
                np.stack([self.embeddings[i] for i in keep]),
                self._gp_targets([self.rewards[i] for i in keep]),
            )
        elif n > self._in_gp:
            self.gp.add(
                np.stack(self.embeddings[self._in_gp :]),
                self._gp_targets(self.rewards[self._in_gp :]),
            )
        self._in_gp = n
        self._changed = False
        self.timing.gp_update += time.perf_counter() - t0
        return iters

    def refit(self, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Warm-started hyperparameter refit with the bounded budget; returns iterations.

        Runs ``refit_iters``, or what a cut-short first fit still owes if more; the
        first fit itself if the GP has none yet. Every step yields to ``should_stop()``.
        """
        before = self.gp.n_fit_iters
        self.update_surrogate(should_stop)
        iters = max(self.gp_settings.refit_iters, self.fit_iters_owed)
        if not self.gp.fitted or iters == 0 or should_stop():
            return self.gp.n_fit_iters - before
        start = self.gp.n_fit_iters
        self.gp.fit(
            iters=iters,
            budget_s=self.gp_settings.refit_budget_s,
            should_stop=should_stop,
            threads=self.gp_settings.threads,
        )
        self.fit_iters_owed = max(0, self.fit_iters_owed - (self.gp.n_fit_iters - start))
        return self.gp.n_fit_iters - before

    def ascent(self, X: np.ndarray) -> np.ndarray:
        """Direction that increases the predicted reward at each embedding."""
        t0 = time.perf_counter()
        g = self.gp.mean_grad(X)
        self.timing.gp_gradient += time.perf_counter() - t0
        return -g if self.gp_settings.negate_reward else g

    # -- one round ----------------------------------------------------------------------
    def initial_batch(self, n: int | None = None) -> list[Candidate]:
        """Round 0: random unseen pool images."""
        n = self.h.initial_images if n is None else n
        picks = self.pool.random_unseen(self.rng, self.issued, n)
        return [self._from_pool(i, "initial") for i in picks]

    def _from_pool(self, i: int, kind: str, parents: list[str] | None = None) -> Candidate:
        pid = self.pool.ids[i]
        self.issued.add(pid)
        return Candidate(
            kind=kind,
            image=self.pool.image(i),
            embedding=self.pool.embeddings[i].copy(),
            pool_id=pid,
            parents=parents or [],
        )

    def select_parents(self) -> list[int]:
        """Indices of observations kept as parents (softmax sampling, no replacement)."""
        n = self.n_observations
        k = min(self.h.n_parents, n)
        scores = np.asarray(self.rewards)
        if self.h.parent_score == "posterior" and n > 1:
            self.update_surrogate()
            mu = self.gp.mean(np.stack(self.embeddings))
            mu = -mu if self.gp_settings.negate_reward else mu
            scores = _spread_like(mu, scores)
        p = softmax(scores, self.h.temperature)
        return [int(i) for i in self.rng.choice(n, size=k, replace=False, p=p)]

    def make_children(self, parents: list[int]) -> list[Candidate]:
        """Crossover children (embeddings only, no image yet), two per pair of parents."""
        children: list[Candidate] = []
        order = list(parents)
        pair = 0
        while len(children) < self.h.n_children:
            a = order[(2 * pair) % len(order)]
            b = order[(2 * pair + 1) % len(order)]
            if a == b:
                b = order[(2 * pair + 2) % len(order)]
            c1, c2, cut = crossover(self.embeddings[a], self.embeddings[b], self.rng)
            for emb, (pa, pb) in ((c1, (a, b)), (c2, (b, a))):
                if len(children) < self.h.n_children:
                    children.append(
                        Candidate(
                            kind="child",
                            image=None,  # type: ignore[arg-type]
                            embedding=emb,
                            seed=int(self.rng.integers(0, 2**31 - 1)),
                            parents=[self.ids[pa], self.ids[pb]],
                            crossover=cut,
                        )
                    )
            pair += 1
        return children

    def step_size(self, k: int) -> float:
        """eta_k = eta_0 / (1 + decay * k)."""
        return self.h.step_size / (1.0 + self.h.step_decay * k)

    def _step(self, E: np.ndarray, k: int) -> np.ndarray:
        step = self.step_size(k) * self.ascent(E)
        if self.h.max_step_fraction > 0:
            cap = self.h.max_step_fraction * self.gp.median_distance()
            norms = np.linalg.norm(step, axis=1, keepdims=True)
            step = step * np.minimum(1.0, cap / np.maximum(norms, 1e-12))
        return E + step

    def refine(
        self,
        children: list[Candidate],
        on_step: Callable[[int, list[Candidate]], None] = lambda k, c: None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[Candidate]:
        """K inner steps for all children at once, up the GP posterior mean.

        ``refine_in = "render"`` (the prototype): after each step, generate the images
        (one batch) and re-embed them, so that the next step starts from the embedding
        of an image that exists; ``on_step(k, children)`` is called after each step.
        ``refine_in = "embedding"``: the K steps stay in embedding space (no image), then
        ONE batched generate + embed; ``on_step`` is called once, with the steps taken.
        A child's ``conditioning`` is the embedding its image was generated from, its
        ``embedding`` that image's. ``should_stop()`` ends the refinement early (a
        deadline), checked before each step; a refinement stopped before its first step
        renders nothing. A selection-only backend ascends in embedding space and takes
        the nearest unseen pool images.
        """
        if not children:
            return children
        E = np.stack([c.embedding for c in children]).astype(np.float64)
        seeds = [c.seed for c in children]
        every_step = self.backend.can_generate and self.h.refine_in == "render"
        steps = 0
        for k in range(self.h.inner_steps):
            if should_stop():
                break
            E = self._step(E, k) if self.gp.fitted else E
            steps = k + 1
            if every_step:
                self._render(children, E, seeds, steps)
                on_step(steps, children)
            elif not self.backend.can_generate:
                for c, e in zip(children, E, strict=True):
                    c.embedding, c.inner_steps = e, steps
        if self.backend.can_generate and not every_step and steps:
            self._render(children, E, seeds, steps)  # "embedding": the round's one render
            on_step(steps, children)
        if not self.backend.can_generate:
            t0 = time.perf_counter()
            picks = self.pool.nearest_unseen(E, self.issued, len(children))
            for c, i in zip(children, picks, strict=False):
                pid = self.pool.ids[i]
                self.issued.add(pid)
                c.image, c.pool_id = self.pool.image(i), pid
                c.conditioning, c.embedding = c.embedding, self.pool.embeddings[i].copy()
            children = [c for c in children if c.image is not None]
            self.timing.select += time.perf_counter() - t0
            on_step(self.h.inner_steps, children)
        return children

    def _render(
        self, children: list[Candidate], E: np.ndarray, seeds: list[int], steps: int
    ) -> None:
        """Generate the rows of ``E`` (one batched call), re-embed, give the children.

        A render the backend could not make (None: NaN or black, retried once) is never
        embedded: that child keeps its last image and embedding (or none: it is dropped).
        A seed the backend changed (``info["eegs_seed"]``) replaces the child's. Rows of
        ``E`` and entries of ``seeds`` are updated in place for the children rendered.
        """
        t0 = time.perf_counter()
        images = self.backend.generate(E.astype(np.float32), seeds)
        t1 = time.perf_counter()
        made = [j for j, im in enumerate(images) if im is not None]
        F = self.backend.embed([images[j] for j in made]) if made else []
        self.timing.generate += t1 - t0
        self.timing.embed += time.perf_counter() - t1
        for j, f in zip(made, F, strict=True):
            c, im = children[j], images[j]
            c.seed = seeds[j] = int(im.info.get("eegs_seed", seeds[j]))
            c.image, c.conditioning, c.embedding, c.inner_steps = im, E[j].copy(), f, steps
            E[j] = f

    def explore(self, parents: list[int]) -> list[Candidate]:
        """Nearest unseen pool images to the parents, then random unseen ones."""
        t0 = time.perf_counter()
        parent_ids = [self.ids[i] for i in parents]
        out = []
        if parents and self.h.n_nearest:
            Q = np.stack([self.embeddings[i] for i in parents])
            for j, i in enumerate(self.pool.nearest_unseen(Q, self.issued, self.h.n_nearest)):
                out.append(self._from_pool(i, "nearest", [parent_ids[j % len(parent_ids)]]))
        for i in self.pool.random_unseen(self.rng, self.issued, self.h.n_random):
            out.append(self._from_pool(i, "random"))
        self.timing.select += time.perf_counter() - t0
        return out

    def next_round(
        self,
        on_ready: Callable[[int, list[Candidate]], None] = lambda k, c: None,
        should_stop: Callable[[], bool] = lambda: False,
        n_images: int | None = None,
    ) -> list[Candidate]:
        """The next batch: random pool images in round 0, then full rounds.

        Round 0 (and any round before two rewards exist) samples the pool at random.

        ``on_ready(k, candidates)`` is called whenever the set of finished images grows:
        with the exploration images first (k = 0), then after each inner step k with
        the children too, so that a caller with a deadline always has something to show.
        ``n_images`` (default: the protocol's round size) trims the exploration images or
        tops the batch up with random pool images.
        """
        self.timing = RoundTiming()
        if self.rewards:
            self.best_by_round.append(max(self.rewards))
        if self.round == 0 or self.n_observations < 2:
            batch = self.initial_batch(n_images)
            self.round += 1
            on_ready(0, batch)
            return batch
        t0 = time.perf_counter()
        parents = self.select_parents()
        children = self.make_children(parents)
        if n_images is not None:
            children = children[:n_images]
        self.timing.select += time.perf_counter() - t0
        explore = self.explore(parents)
        if n_images is not None:
            room = max(0, n_images - len(children))
            explore = explore[:room]
            explore += [
                self._from_pool(i, "random")
                for i in self.pool.random_unseen(self.rng, self.issued, room - len(explore))
            ]
        on_ready(0, list(explore))
        self.update_surrogate(should_stop)

        def ready(k: int, ch: list[Candidate]) -> None:
            on_ready(k, [c for c in ch if c.image is not None] + explore)

        children = self.refine(children, ready, should_stop)
        self.round += 1
        return [c for c in children if c.image is not None] + explore

    def converged(self) -> tuple[bool, str]:
        """Whether to stop, and why."""
        rounds_done = self.round - 1  # round 0 is the initial sample
        if rounds_done >= self.h.max_rounds:
            return True, f"reached max_rounds = {self.h.max_rounds}"
        hist = self.best_by_round
        if len(hist) > self.h.patience:
            recent = hist[-1] - hist[-1 - self.h.patience]
            if recent < self.h.tolerance:
                return True, (
                    f"best reward improved by {recent:.4f} < tolerance {self.h.tolerance} "
                    f"over the last {self.h.patience} rounds"
                )
        return False, ""
