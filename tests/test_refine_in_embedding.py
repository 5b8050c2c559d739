"""generation.heuristic.refine_in: inner steps in embedding space, one render per round.

Real computation at small sizes (procedural backend, real GP); counts, never timings.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from experiment_protocols import ProtocolError, load_protocol
from models.backends.pool import PoolBackend
from models.backends.procedural import ProceduralBackend, procedural_pool
from models.heuristic import HeuristicGenerator

pytestmark = pytest.mark.timeout(120)

K = 3  # inner steps


@pytest.fixture
def backend() -> ProceduralBackend:
    """A fresh backend per test: its anchor table never carries over between tests."""
    return ProceduralBackend(size=64, fit_samples=256, seed=0)


def _settings(refine_in: str):
    g = load_protocol().generation
    g.heuristic.inner_steps = K
    g.heuristic.refine_in = refine_in
    g.gp.fit_iters = 30
    return g


def _brightness(im: Image.Image) -> float:
    return float(np.asarray(im.convert("L"), float).mean() / 255)


class CountingGenerate:
    """Wraps a backend's ``generate``: records each call's batch size."""

    def __init__(self, backend, edit=None) -> None:
        self.inner, self.edit, self.calls = backend.generate, edit, []

    def __call__(self, embeddings, seeds):
        self.calls.append(len(seeds))
        images = self.inner(embeddings, seeds)
        return self.edit(images) if self.edit else images


def _after_round_0(backend, refine_in: str, seed: int = 1) -> HeuristicGenerator:
    """A generator whose round 0 is shown and rewarded (brightness)."""
    g = _settings(refine_in)
    pool = procedural_pool(backend, 48, seed=seed)
    gen = HeuristicGenerator(g.heuristic, g.gp, backend, pool, seed=seed)
    for j, c in enumerate(gen.next_round()):
        gen.observe(f"r0-{j}", c.embedding, _brightness(c.image))
    gen.refit()
    return gen


def _predicted_reward(gen: HeuristicGenerator, X: np.ndarray) -> np.ndarray:
    mu = gen.gp.mean(np.atleast_2d(X))
    return -mu if gen.gp_settings.negate_reward else mu


def test_protocol_field_defaults_to_embedding_and_accepts_render(tmp_path):
    assert load_protocol().generation.heuristic.refine_in == "embedding"
    path = tmp_path / "p.toml"
    path.write_text("[generation.heuristic]\nrefine_in = 'render'\n")
    assert load_protocol(path).generation.heuristic.refine_in == "render"


def test_bogus_refine_in_is_rejected_naming_the_field(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[generation.heuristic]\nrefine_in = 'bogus'\n")
    with pytest.raises(ProtocolError) as err:
        load_protocol(path)
    assert err.value.field == "generation.heuristic.refine_in"
    assert "refine_in" in str(err.value)


def test_embedding_mode_renders_once_per_round(backend, monkeypatch):
    gen = _after_round_0(backend, "embedding")
    n_children = gen.h.n_children
    for r in range(1, 3):
        counter = CountingGenerate(backend)
        monkeypatch.setattr(backend, "generate", counter)
        steps: list[int] = []
        batch = gen.next_round(on_ready=lambda k, c, steps=steps: steps.append(k))
        assert counter.calls == [n_children]  # one batched call for all children
        assert steps == [0, K]  # exploration first, then the children once
        children = [c for c in batch if c.kind == "child"]
        assert len(children) == n_children
        for c in children:
            assert c.inner_steps == K
            assert c.image is not None
            assert c.conditioning is not None
            assert not np.allclose(c.conditioning, c.embedding)
            np.testing.assert_allclose(c.embedding, backend.embed([c.image])[0], atol=1e-5)
        assert gen.timing.generate > 0
        assert gen.timing.embed > 0
        assert gen.timing.gp_gradient > 0
        for j, c in enumerate(batch):
            gen.observe(f"r{r}-{j}", c.embedding, _brightness(c.image))
        gen.refit()


def test_render_mode_renders_at_every_inner_step(backend, monkeypatch):
    gen = _after_round_0(backend, "render")
    counter = CountingGenerate(backend)
    monkeypatch.setattr(backend, "generate", counter)
    steps: list[int] = []
    batch = gen.next_round(on_ready=lambda k, c: steps.append(k))
    assert counter.calls == [gen.h.n_children] * K
    assert steps == [0, *range(1, K + 1)]
    assert all(c.inner_steps == K for c in batch if c.kind == "child")


def test_embedding_mode_ascends_the_gp_mean_with_the_same_steps(backend):
    """A GP fitted on a reward linear in the embedding: every child's conditioning is
    predicted higher than the crossover child it started from, and equals K steps of
    the render mode's step rule (schedule and trust-region cap)."""
    g = _settings("embedding")
    pool = procedural_pool(backend, 48, seed=3)
    gen = HeuristicGenerator(g.heuristic, g.gp, backend, pool, seed=3)
    w = np.zeros(backend.embed_dim)
    w[:3] = 1.0  # mean red, green and blue: a clear gradient
    for i in range(32):
        e = pool.embeddings[i]
        gen.observe(f"o{i}", e, float(1 / (1 + np.exp(-(e @ w) / 3))))
    gen.update_surrogate()
    assert gen.gp.fitted
    children = gen.make_children(gen.select_parents())
    start = np.stack([c.embedding for c in children]).astype(np.float64)
    expected = start.copy()
    for k in range(K):
        expected = gen._step(expected, k)
    out = gen.refine(children)
    cond = np.stack([c.conditioning for c in out])
    np.testing.assert_allclose(cond, expected, rtol=1e-10, atol=1e-10)
    assert np.all(_predicted_reward(gen, cond) > _predicted_reward(gen, start))
    cap = gen.h.max_step_fraction * gen.gp.median_distance()
    assert np.all(np.linalg.norm(cond - start, axis=1) <= K * cap + 1e-9)


def test_embedding_mode_honours_should_stop_between_steps(backend, monkeypatch):
    gen = _after_round_0(backend, "embedding")
    counter = CountingGenerate(backend)
    monkeypatch.setattr(backend, "generate", counter)
    asked: list[int] = []

    def stop_after_two_steps() -> bool:
        asked.append(1)
        return len(asked) > 2

    steps: list[int] = []
    kids = gen.refine(
        gen.make_children(gen.select_parents()),
        on_step=lambda k, c: steps.append(k),
        should_stop=stop_after_two_steps,
    )
    assert counter.calls == [gen.h.n_children]  # the one render, after the steps taken
    assert steps == [2]
    assert all(c.image is not None and c.inner_steps == 2 for c in kids)
    # stopped before the first step: nothing rendered, no image (next_round drops them)
    counter.calls.clear()
    kids = gen.refine(gen.make_children(gen.select_parents()), should_stop=lambda: True)
    assert counter.calls == []
    assert all(c.image is None and c.inner_steps == 0 for c in kids)


def test_embedding_mode_keeps_failed_renders_out_and_takes_changed_seeds(backend, monkeypatch):
    gen = _after_round_0(backend, "embedding")

    def edit(images):
        images[0] = None  # the backend could not make this one
        images[1].info["eegs_seed"] = 12345  # a retry with another seed
        return images

    counter = CountingGenerate(backend, edit)
    monkeypatch.setattr(backend, "generate", counter)
    children = gen.make_children(gen.select_parents())
    out = gen.refine(children)
    assert counter.calls == [len(children)]
    assert out[0].image is None
    assert out[0].conditioning is None
    assert out[0].inner_steps == 0
    assert out[1].seed == 12345
    assert out[1].image is not None
    assert all(c.inner_steps == K for c in out[1:])
    batch = gen.next_round()  # next_round drops a child without an image
    assert all(c.image is not None for c in batch)
    assert sum(c.kind == "child" for c in batch) == gen.h.n_children - 1


def test_selection_only_backend_is_unchanged_by_refine_in(tmp_path, backend):
    folder = tmp_path / "pool"
    folder.mkdir()
    params = np.random.default_rng(1).random((24, 18))
    for i, im in enumerate(backend.render(params, range(24))):
        im.save(folder / f"p{i:02d}.png")
    pb = PoolBackend(folder, ".cache.safetensors", [".png"])
    picked = {}
    for mode in ("render", "embedding"):
        g = _settings(mode)
        gen = HeuristicGenerator(g.heuristic, g.gp, pb, pb.pool, seed=0)
        first = gen.next_round()
        for j, c in enumerate(first):
            gen.observe(c.pool_id, c.embedding, j / len(first))
        batch = gen.next_round()
        picked[mode] = [c.pool_id for c in batch]
        assert all(c.inner_steps == K for c in batch if c.kind == "child")
    assert picked["render"] == picked["embedding"]


def test_bench_optimizer_reports_both_modes_and_the_paired_difference(tmp_path):
    from app.bench import optimizer

    protocol = tmp_path / "p.toml"
    protocol.write_text(
        "[generation.heuristic]\ninner_steps = 2\n[generation.gp]\nfit_iters = 20\n"
        "[generation.procedural]\nsize = 64\npool_size = 32\nfit_samples = 128\n"
    )
    p = argparse.ArgumentParser()
    optimizer.add_arguments(p)
    args = p.parse_args(["--seeds", "2", "--rounds", "2", "--protocol", str(protocol)])
    assert args.refine_in == "both"
    out = optimizer.run(args)
    assert out["refine_in"] == ["render", "embedding"]
    assert out["heuristic_is"] == "embedding"  # the protocol's mode
    gain = out["oracle_gain"]
    assert set(gain) == {"heuristic", "random", "heuristic_render", "heuristic_embedding"}
    assert gain["heuristic"] == gain["heuristic_embedding"]
    s = out["summary"]
    for fig in (*s["oracle_gain"].values(), *s["embedding_minus_render"].values()):
        assert fig["n"] == 2
        assert len(fig["ci95"]) == 2
        assert fig["ci95"][0] <= fig["mean"] <= fig["ci95"][1]
        assert 0 <= fig["share_gt_0"] <= 1
    per = out["per_seed"]
    diff = [
        x["refine_in"]["embedding"]["oracle_gain"] - x["refine_in"]["render"]["oracle_gain"]
        for x in per
    ]
    assert s["embedding_minus_render"]["oracle_gain"]["mean"] == pytest.approx(
        np.mean(diff), abs=2e-4
    )
    # both modes start from the same subject, pool and backend state: same round 0
    for x in per:
        assert x["refine_in"]["embedding"]["curve"][0] == x["refine_in"]["render"]["curve"][0]
    argv = ["--seeds", "1", "--rounds", "1", "--refine-in", "embedding"]
    one = optimizer.run(p.parse_args([*argv, "--protocol", str(protocol)]))
    assert one["refine_in"] == ["embedding"]
    assert "embedding_minus_render" not in one["summary"]
    assert one["summary"]["oracle_gain"]["embedding"]["ci95"] is None


def test_stats_t_interval():
    from app.bench._stats import stats

    s = stats([1.0, 2.0, 3.0, -1.0])
    assert s["mean"] == 1.25
    assert s["share_gt_0"] == 0.75
    # t(0.975, 3) = 3.182446; sd = 1.707825
    half = 3.182446 * 1.707825 / 2
    assert s["ci95"] == pytest.approx([1.25 - half, 1.25 + half], abs=1e-3)
