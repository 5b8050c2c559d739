"""The sdxl backend on a CPU: a tiny random pipeline through the same backend code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiment_protocols import load_protocol
from models.backends.pool import ImagePool
from models.backends.procedural import ProceduralRenderer, sample_parameters
from models.backends.sdxl import SDXLBackend
from models.heuristic import HeuristicGenerator

EMBED_DIM = 16


def _ip_adapter_state_dict(unet, seed: int = 0) -> dict:
    """An IP-Adapter (4 image tokens) in the file layout of h94/IP-Adapter, random weights."""
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    widths = list(unet.config.block_out_channels)
    state = {
        "image_proj": {
            "proj.weight": torch.randn(4 * cross, EMBED_DIM, generator=g) * 0.5,
            "proj.bias": torch.zeros(4 * cross),
            "norm.weight": torch.ones(cross),
            "norm.bias": torch.zeros(cross),
        },
        "ip_adapter": {},
    }
    key = 1  # the checkpoint numbers cross-attention layers 1, 3, 5, ...
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            if name.startswith("mid_block"):
                width = widths[-1]
            elif name.startswith("up_blocks"):
                width = widths[::-1][int(name.split(".")[1])]
            else:
                width = widths[int(name.split(".")[1])]
            for kind in ("to_k_ip", "to_v_ip"):
                w = torch.randn(width, cross, generator=g) / np.sqrt(cross)
                state["ip_adapter"][f"{key}.{kind}.weight"] = w
            key += 2
    return state


def _tiny_backend(scale: float = 0.5, steps: int = 2) -> SDXLBackend:
    """The shared tiny pipeline, with the IP-Adapter state dict this test builds."""
    return SDXLBackend.tiny_random(
        embed_dim=EMBED_DIM,
        steps=steps,
        ip_adapter_scale=scale,
        ip_adapter_for=_ip_adapter_state_dict,
    )


@pytest.fixture(scope="module")
def backend() -> SDXLBackend:
    torch.set_num_threads(2)
    return _tiny_backend()


def _arr(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_tiny_pipeline_generates_from_embeddings_with_fixed_noise(backend):
    rng = np.random.default_rng(0)
    E = rng.normal(size=(3, EMBED_DIM)).astype(np.float32) * 3
    images = backend.generate(E, [1, 2, 3])
    assert [im.size for im in images] == [(32, 32)] * 3
    assert backend.pipe.scheduler.config.timestep_spacing == "trailing"
    again = backend.generate(E[:1], [1])[0]
    other_seed = backend.generate(E[:1], [7])[0]
    seed_effect = np.abs(_arr(other_seed) - _arr(images[0])).mean()
    assert seed_effect > 10
    # the same seed and embedding, alone or in a batch: the same image up to float noise
    assert np.abs(_arr(again) - _arr(images[0])).mean() < 0.1 * seed_effect
    emb = backend.embed(images)
    assert emb.shape == (3, EMBED_DIM)
    assert emb.dtype == np.float32


def test_ip_adapter_conditions_on_the_embedding_with_its_scale():
    E = np.random.default_rng(1).normal(size=(2, EMBED_DIM)).astype(np.float32) * 3
    off = _tiny_backend(scale=0.0)
    a, b = (off.generate(E[i : i + 1], [5])[0] for i in range(2))
    np.testing.assert_array_equal(_arr(a), _arr(b))  # scale 0: the embedding is ignored
    on = _tiny_backend(scale=2.0)
    c, d = (on.generate(E[i : i + 1], [5])[0] for i in range(2))
    assert np.abs(_arr(c) - _arr(d)).mean() > 1.0
    assert np.abs(_arr(c) - _arr(a)).mean() > 1.0


def test_a_heuristic_round_runs_on_the_tiny_pipeline(backend, tmp_path):
    from PIL import Image

    folder = tmp_path / "pool"
    folder.mkdir()
    rgb = ProceduralRenderer(32).render(sample_parameters(12, np.random.default_rng(0)), range(12))
    for i, a in enumerate(rgb):
        Image.fromarray((a * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    pool = ImagePool.from_folder(folder, backend.embed, "tiny")
    g = load_protocol().generation
    g.heuristic.inner_steps = 2
    g.heuristic.refine_in = "render"
    g.gp.fit_iters = 10
    gen = HeuristicGenerator(g.heuristic, g.gp, backend, pool, seed=0)
    first = gen.next_round(n_images=6)
    for j, c in enumerate(first):
        gen.observe(c.pool_id, c.embedding, j / 6)
    calls = []
    original = backend.generate

    def counting(E, seeds):
        calls.append(len(seeds))
        return original(E, seeds)

    backend.generate = counting
    try:
        batch = gen.next_round(n_images=6)
    finally:
        del backend.generate
    children = [c for c in batch if c.kind == "child"]
    assert len(children) == 4
    assert calls == [4, 4]  # one batched call per inner step for all children
    for c in children:
        assert c.inner_steps == 2
        assert c.image.size == (32, 32)
        assert c.conditioning is not None
        assert not np.allclose(c.conditioning, c.embedding)  # re-embedded after generation
