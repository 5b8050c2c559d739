"""Heuristic generator, procedural and pool backends, rewards: real computation, small sizes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from experiment_protocols import ProtocolError, load_protocol
from experiment_protocols.schema import PROTOCOL_DIR
from models.backends.pool import ImagePool, PoolBackend
from models.backends.procedural import ProceduralBackend, procedural_pool
from models.heuristic import HeuristicGenerator, crossover, softmax
from models.rewards.base import EpochData
from models.rewards.lpp import LppReward
from models.rewards.semantic import SemanticReward


@pytest.fixture(scope="module")
def backend() -> ProceduralBackend:
    return ProceduralBackend(size=64, fit_samples=256, seed=0)


@pytest.fixture(scope="module")
def settings():
    """The prototype's schedule (a render per inner step), which these tests follow."""
    g = load_protocol().generation
    g.heuristic.inner_steps = 3
    g.heuristic.refine_in = "render"
    g.gp.fit_iters = 30
    return g


def test_protocol_defaults_are_the_prototype_values():
    g = load_protocol().generation
    h = g.heuristic
    assert (h.inner_steps, h.step_size, h.step_decay, h.n_parents) == (15, 30.0, 0.1, 4)
    assert g.sdxl.diffusion_steps == 8
    assert g.sdxl.ip_adapter_scale == 0.5
    assert g.gp.negate_reward is True
    assert g.backend == "procedural"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[generation.heuristic]\ninner_steps = 0\n", "generation.heuristic.inner_steps"),
        ("[generation.sdxl]\ndiffusion_steps = 3\n", "generation.sdxl.diffusion_steps"),
        ("[generation]\nbackend = 'sdxl'\n", "generation"),
        ("[generation.reward]\nmode = 'semantic'\n", "generation.reward"),
        ("[generation.gp]\nrefit_itres = 3\n", "generation.gp.refit_itres"),
    ],
)
def test_bad_generation_settings_name_the_field(tmp_path, text, field):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ProtocolError) as err:
        load_protocol(path)
    assert err.value.field == field


def test_crossover_swaps_one_contiguous_slice():
    rng = np.random.default_rng(0)
    a, b = np.arange(10.0), -np.arange(10.0) - 1
    c1, c2, (lo, hi) = crossover(a, b, rng)
    assert 0 <= lo < hi <= 10
    assert hi - lo < 10
    np.testing.assert_array_equal(c1[lo:hi], b[lo:hi])
    np.testing.assert_array_equal(c2[lo:hi], a[lo:hi])
    keep = np.r_[0:lo, hi:10]
    np.testing.assert_array_equal(c1[keep], a[keep])
    np.testing.assert_array_equal(c2[keep], b[keep])


def test_softmax_parent_selection_prefers_high_rewards(backend, settings):
    pool = procedural_pool(backend, 16)
    gen = HeuristicGenerator(settings.heuristic, settings.gp, backend, pool, seed=0)
    rewards = np.linspace(0, 1, 10)
    for i, r in enumerate(rewards):
        gen.observe(f"o{i}", pool.embeddings[i], r)
    counts = np.zeros(10)
    for _ in range(300):
        picks = gen.select_parents()
        assert len(set(picks)) == len(picks) == settings.heuristic.n_parents
        counts[picks] += 1
    assert counts[-1] > counts[0] * 3  # softmax(r / 0.1): e^10 between the extremes
    p = softmax(rewards, 0.1)
    assert p.argmax() == 9
    assert np.isclose(p.sum(), 1.0)


def test_step_size_schedule(backend, settings):
    gen = HeuristicGenerator(settings.heuristic, settings.gp, backend, procedural_pool(backend, 8))
    assert gen.step_size(0) == 30.0
    assert gen.step_size(10) == pytest.approx(15.0)


def test_procedural_backend_is_seeded_and_batch_invariant(backend):
    pool = procedural_pool(backend, 8)
    E = pool.embeddings[:3]
    batch = backend.generate(E, [1, 2, 3])
    again = backend.generate(E, [1, 2, 3])
    single = [backend.generate(E[i : i + 1], [s])[0] for i, s in enumerate([1, 2, 3])]
    other_seed = backend.generate(E[:1], [99])[0]
    for x, y, z in zip(batch, again, single, strict=True):
        assert x.size == (64, 64)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        np.testing.assert_array_equal(np.asarray(x), np.asarray(z))
    assert np.abs(np.asarray(other_seed, float) - np.asarray(batch[0], float)).mean() > 1
    emb = backend.embed(batch)
    assert emb.shape == (3, backend.embed_dim)
    assert emb.dtype == np.float32
    # the embedding -> image map is an approximate inverse: closer to its target than others
    d = np.linalg.norm(emb[:, None] - E[None], axis=2)
    assert (d.argmin(axis=1) == np.arange(3)).mean() >= 2 / 3


def test_procedural_inner_loop_does_not_drift():
    """render -> embed -> render is a fixed point: 15 passes of a crossover child change
    nothing, and a small step from an image's embedding changes that image a little."""
    backend = ProceduralBackend(size=64, fit_samples=256, seed=0)
    pool = procedural_pool(backend, 32, seed=2)
    rng = np.random.default_rng(0)
    kids = np.stack(
        [crossover(pool.embeddings[i], pool.embeddings[i + 1], rng)[0] for i in range(8)]
    )
    seeds = list(range(8))
    first = backend.generate(kids, seeds)
    F = backend.embed(first)
    for _ in range(15):
        F = backend.embed(backend.generate(F, seeds))
    last = backend.generate(F, seeds)
    for a, b in zip(first, last, strict=True):
        assert np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() < 0.5  # of 255
    # without anchors (a fresh backend) the same embeddings regress toward the mean
    fresh = ProceduralBackend(size=64, fit_samples=256, seed=0)
    drift = [
        np.abs(np.asarray(a, float) - np.asarray(b, float)).mean()
        for a, b in zip(first, fresh.generate(F, seeds), strict=True)
    ]
    assert np.mean(drift) > 10.0
    # a small step moves the image a little, in the direction of the step
    own = backend.embed([pool.image(0)])
    step = np.zeros_like(own)
    step[0, :3] = 0.5  # brighter mean red, green and blue (features 0-2)
    moved = backend.embed(backend.generate(own + step, [5]))
    assert 0 < (moved - own)[0, :3].mean() < 1.5
    assert np.linalg.norm(moved - own) < backend.anchor_radius


@pytest.mark.parametrize("refine_in", ["render", "embedding"])
def test_heuristic_rounds_raise_a_pixel_reward(backend, settings, refine_in):
    """Reward = mean brightness: real GP, real renders; children must beat round 0."""
    pool = procedural_pool(backend, 64, seed=1)
    h = settings.heuristic.model_copy(update={"refine_in": refine_in})
    gen = HeuristicGenerator(h, settings.gp, backend, pool, seed=1)

    def brightness(im: Image.Image) -> float:
        return float(np.asarray(im.convert("L"), float).mean() / 255)

    first = None
    child_means, shown = [], []
    for r in range(4):
        steps: list[int] = []
        batch = gen.next_round(on_ready=lambda k, c, steps=steps: steps.append(k))
        values = [brightness(c.image) for c in batch]
        if r == 0:
            first = np.mean(values)
            assert {c.kind for c in batch} == {"initial"}
        else:
            kinds = [c.kind for c in batch]
            assert kinds.count("child") == settings.heuristic.n_children
            assert {"nearest", "random"} <= set(kinds)
            # exploration first, then each inner step's renders (or the one render)
            assert steps == ([0, 1, 2, 3] if refine_in == "render" else [0, 3])
            child = [v for v, c in zip(values, batch, strict=True) if c.kind == "child"]
            child_means.append(np.mean(child))
            for c in batch:
                if c.kind == "child":
                    assert c.inner_steps == 3
                    assert len(c.parents) == 2
                    assert c.seed is not None
        for j, (c, v) in enumerate(zip(batch, values, strict=True)):
            gen.observe(f"r{r}-{j}", c.embedding, v)
        gen.refit()
        shown += [c.pool_id for c in batch if c.pool_id is not None]
    assert max(child_means) > first + 0.05
    assert len(shown) == len(set(shown))  # exploration never repeats a pool image


def test_deadline_stops_refinement_early(backend, settings):
    pool = procedural_pool(backend, 32)
    gen = HeuristicGenerator(settings.heuristic, settings.gp, backend, pool, seed=2)
    for i in range(6):
        gen.observe(f"o{i}", pool.embeddings[i], i / 6)
    first = gen.next_round()  # round 0 samples the pool even with rewards in
    assert {c.kind for c in first} == {"initial"}
    calls = []
    batch = gen.next_round(
        on_ready=lambda k, c: calls.append(k), should_stop=lambda: len(calls) >= 2
    )
    children = [c for c in batch if c.kind == "child"]
    assert calls == [0, 1]
    assert all(c.inner_steps == 1 for c in children)


def test_convergence_stops_after_patience(backend, settings):
    pool = procedural_pool(backend, 64)
    h = settings.heuristic.model_copy(update={"patience": 2, "inner_steps": 1})
    gen = HeuristicGenerator(h, settings.gp, backend, pool, seed=3)
    stopped = None
    for r in range(8):
        batch = gen.next_round()
        for j, c in enumerate(batch):
            gen.observe(f"{r}-{j}", c.embedding, 0.5)  # a flat reward never improves
        done, reason = gen.converged()
        if done:
            stopped = (r, reason)
            break
    assert stopped is not None
    assert "tolerance" in stopped[1]


def test_image_pool_from_folder_caches_embeddings(tmp_path, backend):
    folder = tmp_path / "pool"
    (folder / "sub").mkdir(parents=True)
    images = backend.render(np.random.default_rng(0).random((5, 18)), list(range(5)))
    for i, im in enumerate(images):
        im.save(folder / ("sub" if i == 4 else "") / f"im{i}.png")
    (folder / "notes.txt").write_text("not an image")
    calls = []

    def embedder(ims):
        calls.append(len(ims))
        return backend.embed(ims)

    pool = ImagePool.from_folder(folder, embedder, "test-embedder", batch_size=2)
    assert pool.ids == ["im0.png", "im1.png", "im2.png", "im3.png", "sub/im4.png"]
    assert sum(calls) == 5
    calls.clear()
    again = ImagePool.from_folder(folder, embedder, "test-embedder")
    assert calls == []
    np.testing.assert_allclose(again.embeddings, pool.embeddings)
    images[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "im0.png")
    ImagePool.from_folder(folder, embedder, "test-embedder")
    assert calls == [1]  # only the changed file
    ImagePool.from_folder(folder, embedder, "another-embedder")
    assert calls == [1, 5]
    near = pool.nearest_unseen(pool.embeddings[[2]], {"im2.png"}, 2)
    assert len(near) == 2
    assert pool.index("im2.png") not in near
    assert len(pool.random_unseen(np.random.default_rng(0), set(pool.ids[:3]), 9)) == 2


def test_pool_backend_selects_instead_of_generating(tmp_path, backend, settings):
    folder = tmp_path / "pool"
    folder.mkdir()
    for i, im in enumerate(backend.render(np.random.default_rng(1).random((24, 18)), range(24))):
        im.save(folder / f"p{i:02d}.png")
    pb = PoolBackend(folder, ".cache.safetensors", [".png"])
    assert not pb.can_generate
    gen = HeuristicGenerator(settings.heuristic, settings.gp, pb, pb.pool, seed=0)
    first = gen.next_round()
    for j, c in enumerate(first):
        gen.observe(c.pool_id, c.embedding, j / len(first))
    batch = gen.next_round()
    ids = [c.pool_id for c in first + batch]
    assert len(ids) == len(set(ids))  # never the same pool image twice
    assert sum(c.kind == "child" for c in batch) == settings.heuristic.n_children


def test_rewards_lpp_and_semantic():
    rng = np.random.default_rng(0)
    sfreq, tmin = 250.0, -0.2
    data = rng.normal(0, 1, (3, 301))
    t = tmin + np.arange(301) / sfreq
    data[0, (t >= 0.4) & (t <= 0.8)] += 8.0
    epoch = EpochData(data, ["Pz", "Oz", "Cz"], sfreq, tmin)
    high = LppReward((0.4, 0.8), ["Pz"], 5.0)(epoch)
    low = LppReward((0.4, 0.8), ["Oz"], 5.0)(epoch)
    assert high.value > 0.8 > 0.6 > low.value > 0.3
    with pytest.raises(ValueError, match="LPP channels"):
        LppReward((0.4, 0.8), ["Fz"], 5.0)(epoch)

    import torch

    class Linear(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=2)

    same = SemanticReward(Linear(), data[:, 50:300].mean(1))(epoch)
    opposite = SemanticReward(Linear(), -data[:, 50:300].mean(1))(epoch)
    assert same.value == pytest.approx(1.0)
    assert opposite.value == pytest.approx(0.0, abs=1e-9)


def test_asymmetry_reward_follows_frontal_alpha():
    from models.rewards.asymmetry import AsymmetryReward

    rng = np.random.default_rng(1)
    sfreq, tmin = 250.0, -0.2
    t = tmin + np.arange(301) / sfreq
    alpha = 10.0 * np.sin(2 * np.pi * 10.0 * t)
    names = ["F3", "F4", "Oz"]
    reward = AsymmetryReward([("F3", "F4"), ("F7", "F8")], (8.0, 13.0), (0.3, 1.0), 0.5)

    def epoch(left_alpha: float, right_alpha: float) -> EpochData:
        data = rng.normal(0, 1, (3, 301))
        data[0] += left_alpha * alpha
        data[1] += right_alpha * alpha
        data[:2, t >= 0.3] += 20.0  # a slow shift changes nothing
        return EpochData(data, names, sfreq, tmin)

    pleasant = reward(epoch(0.5, 1.0))  # less left-frontal alpha
    unpleasant = reward(epoch(1.0, 0.5))
    assert pleasant.value > 0.75
    assert unpleasant.value < 0.25
    assert pleasant.details["alpha_asymmetry"] == pytest.approx(np.log(4.0), abs=0.1)
    assert reward(epoch(1.0, 1.0)).value == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match="frontal pairs"):
        reward(EpochData(np.zeros((2, 301)), ["Oz", "Pz"], sfreq, tmin))
    with pytest.raises(ValueError, match="Nyquist"):
        AsymmetryReward([("F3", "F4")], (8.0, 13.0), (0.3, 1.0), 0.5)(
            EpochData(np.zeros((2, 30)), ["F3", "F4"], 20.0, tmin)
        )


def test_asymmetry_reward_tracks_the_brain_models_hidden_valence():
    """Single trials, default SNR: the asymmetry index (the personal reward's fallback)."""
    from models.brain.response import BrainModel
    from models.rewards.base import from_settings

    pool = procedural_pool(ProceduralBackend(size=96, fit_samples=256), 80, seed=5)
    images = [pool.image(i) for i in range(len(pool))]
    brain = BrainModel(subject_seed=11, sfreq=250.0, realism="clean")  # the affect in full
    X = brain.simulate_epochs(images, seed=3)
    X -= X[:, :, :50].mean(axis=2, keepdims=True)
    settings = load_protocol(PROTOCOL_DIR / "pilot.toml").generation.reward
    reward = from_settings(settings.without_ratings())  # its fallback: the asymmetry index
    r = [reward(EpochData(x, brain.ch_names, brain.sfreq, -0.2)).value for x in X]
    valence = [brain.affect(im)[0] for im in images]
    assert np.corrcoef(r, valence)[0, 1] > 0.3


def test_affective_reward_uses_a_saved_decoder(tmp_path):
    from experiment_protocols.rewards.affective import AffectiveSettings
    from models.decoders.classifiers import CLASS_NAMES, load_classifier, make_classifier
    from models.rewards.base import from_settings

    rng = np.random.default_rng(0)
    X = rng.normal(0, 5, (24, 4, 250)).astype(np.float32)
    y = np.repeat([0, 1], 12)
    X[y == 1, 0, 100:200] += 6.0  # amusement: a late positive deflection on channel 0
    clf = make_classifier("eegnet", 4, 250, 250.0, {"eegnet": {"epochs": 3}}).fit(X, y)
    path = clf.save(tmp_path / "decoder.safetensors")
    settings = AffectiveSettings(decoder=str(path), target_class="amusement")
    reward_fn = from_settings(settings)
    epoch = np.concatenate([rng.normal(0, 5, (4, 50)), X[13]], axis=1)  # -0.2..1.0 s
    out = reward_fn(EpochData(epoch, ["a", "b", "c", "d"], 250.0, -0.2))
    expected = load_classifier(path).predict_proba(X[13:14])[0, CLASS_NAMES.index("amusement")]
    assert out.value == pytest.approx(float(expected), abs=1e-6)
    assert set(out.details["proba"]) == set(CLASS_NAMES)
    with pytest.raises(ValueError, match="target class"):
        from_settings(settings.model_copy(update={"target_class": "anger"}))


def test_the_gp_holds_the_best_quarter_and_the_newest_past_its_cap(backend, settings):
    gp_settings = settings.gp.model_copy(update={"max_points": 16, "fit_iters": 5})
    pool = procedural_pool(backend, 48, seed=3)
    gen = HeuristicGenerator(settings.heuristic, gp_settings, backend, pool, seed=3)
    rewards = np.random.default_rng(3).normal(size=40)
    for i in range(16):
        gen.observe(f"o{i}", pool.embeddings[i], rewards[i])
    gen.update_surrogate()
    assert gen.gp.n == 16
    for i in range(16, 40):
        gen.observe(f"o{i}", pool.embeddings[i], rewards[i])
        gen.update_surrogate()
        assert gen.gp.n == min(i + 1, 16)
    keep = gen.gp_indices()
    best = set(np.argsort(-rewards)[:4])
    assert best <= set(keep)
    newest = [i for i in range(39, -1, -1) if i not in best][:12]
    assert set(keep) == best | set(newest)
    # the GP holds exactly those observations, with the targets the protocol asks for
    np.testing.assert_array_equal(gen.gp.X, pool.embeddings[keep])
    sign = -1.0 if gp_settings.negate_reward else 1.0
    np.testing.assert_allclose(gen.gp.y, sign * rewards[keep])


def test_posterior_parents_trust_a_consistent_neighbourhood_over_one_lucky_trial(backend, settings):
    """Six images near A all rewarded 0.6; near B, one trial of 1.0 among zeros."""
    rng = np.random.default_rng(7)
    dim = backend.embed_dim
    a, b = rng.normal(size=dim), rng.normal(size=dim)
    a, b = 5 * a / np.linalg.norm(a), 5 * b / np.linalg.norm(b)

    def spike_share(parent_score: str) -> float:
        h = settings.heuristic.model_copy(update={"n_parents": 2, "parent_score": parent_score})
        gen = HeuristicGenerator(h, settings.gp, backend, procedural_pool(backend, 8), seed=1)
        for i in range(6):
            gen.observe(f"a{i}", a + 0.05 * rng.normal(size=dim), 0.6)
            gen.observe(f"b{i}", b + 0.05 * rng.normal(size=dim), 1.0 if i == 0 else 0.0)
        picks = [gen.ids[i] for _ in range(300) for i in gen.select_parents()]
        return picks.count("b0") / 300

    by_reward, by_posterior = spike_share("reward"), spike_share("posterior")
    assert by_reward > 0.8  # the single lucky trial is nearly always a parent
    assert by_posterior < 0.3


def test_posterior_parents_come_from_the_better_neighbourhood_however_noisy_the_trials(
    backend, settings
):
    """Two places, true rewards 0.6 and 0.4, ten trials each with noise of SD 0.25.

    The GP pools each place's trials and, seeing mostly noise, shrinks its posterior
    mean towards its constant: a softmax at the rewards' temperature over that mean
    picked parents nearly at random (about 0.6 from the better place here). Spread
    like the rewards, it picks them from the better place nearly always, which
    single trials cannot.
    """
    rng = np.random.default_rng(11)
    dim = backend.embed_dim
    a, b = rng.normal(size=dim), rng.normal(size=dim)
    a, b = 5 * a / np.linalg.norm(a), 5 * b / np.linalg.norm(b)
    noise = rng.normal(0.0, 0.25, size=(2, 10))

    def share_from_a(parent_score: str) -> float:
        h = settings.heuristic.model_copy(update={"parent_score": parent_score})
        gen = HeuristicGenerator(h, settings.gp, backend, procedural_pool(backend, 8), seed=1)
        for i in range(10):
            gen.observe(f"a{i}", a + 0.01 * rng.normal(size=dim), 0.6 + noise[0, i])
            gen.observe(f"b{i}", b + 0.01 * rng.normal(size=dim), 0.4 + noise[1, i])
        picks = [gen.ids[i] for _ in range(200) for i in gen.select_parents()]
        return sum(p.startswith("a") for p in picks) / len(picks)

    by_reward, by_posterior = share_from_a("reward"), share_from_a("posterior")
    assert by_posterior > 0.95
    assert by_reward < 0.9


def test_spread_like_keeps_the_ranks_and_takes_the_reference_mean_and_sd():
    from models.heuristic import _spread_like

    values = np.array([0.50, 0.52, 0.49, 0.51])
    reference = np.array([0.1, 0.9, 0.3, 0.7])
    out = _spread_like(values, reference)
    np.testing.assert_array_equal(np.argsort(out), np.argsort(values))
    assert out.mean() == pytest.approx(reference.mean())
    assert out.std() == pytest.approx(reference.std())
    flat = _spread_like(np.full(4, 0.3), reference)
    np.testing.assert_allclose(flat, reference.mean())


def test_an_image_shown_again_stays_one_observation_holding_its_mean(backend, settings):
    gp_settings = settings.gp.model_copy(update={"fit_iters": 5})
    pool = procedural_pool(backend, 8, seed=5)
    gen = HeuristicGenerator(settings.heuristic, gp_settings, backend, pool, seed=5)
    for i, r in enumerate([0.2, 0.5, 0.8]):
        gen.observe(f"o{i}", pool.embeddings[i], r)
    gen.update_surrogate()
    assert gen.gp.n == 3
    before = gen.gp.mean(pool.embeddings[:1])
    gen.observe("o0", pool.embeddings[0], 0.6)  # its second presentation
    gen.observe("o0", pool.embeddings[0], 0.7)
    assert (gen.ids, gen.n_rewards) == (["o0", "o1", "o2"], [3, 1, 1])
    assert gen.rewards[0] == pytest.approx(0.5)
    gen.update_surrogate()
    assert gen.gp.n == 3
    np.testing.assert_allclose(gen.gp.y, -np.asarray([0.5, 0.5, 0.8]))  # negate_reward
    assert not np.allclose(gen.gp.mean(pool.embeddings[:1]), before)  # the posterior moved
