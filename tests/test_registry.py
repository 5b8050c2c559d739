"""A reward, a backend and a subject family added from this file alone (docs/architecture.md 13).

Each toy is what a lab would write: a settings class and a reward class, a backend spec
and a Backend class, a family line and a SubjectFamily class. The protocol accepts them,
a session's protocol.toml keeps their settings, and one offline closed-loop round of
``eegs bench loop`` (its :func:`~app.bench.loop.run_participant`, in this process) runs
on all three at once. Nothing else in the repository names them.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pytest
from PIL import Image

from app.bench.loop import run_participant
from app.pilot import write_protocol
from experiment_protocols import PROTOCOL_DIR, ProtocolError, load_protocol
from experiment_protocols.brain_model import SUBJECT_FAMILIES, register_family
from experiment_protocols.generation import BACKENDS, BackendSpec, register_backend
from experiment_protocols.rewards import RewardSettings, reward_modes
from models.backends.base import Backend, backend_class
from models.backends.pool import ImagePool
from models.brain.families.base import (
    AffectCarriers,
    FamilyDraws,
    SubjectFamily,
    family_class,
)
from models.rewards.base import EpochData, Reward, RewardMode, epoch_window, reward_class

pytestmark = pytest.mark.timeout(300)

REWARD, BACKEND, FAMILY = "toy_reward", "toy_backend", "toy_family"
CALLS: dict[str, int] = {}


def _define_toys() -> None:
    """The lab's side: each class and registration line, in one place."""

    class ToySettings(RewardSettings):
        """Logistic of the mean amplitude of every channel, 0.2-0.6 s (training-free)."""

        mode: Literal["toy_reward"] = "toy_reward"
        scale_uv: float = 2.0
        window_s: tuple[float, float] = (0.2, 0.6)

        description: ClassVar[str] = "the mean amplitude of every channel (a toy)"
        training_free: ClassVar[bool] = True

    class ToyReward(RewardMode):
        mode = "toy_reward"

        def __init__(self, scale_uv: float, window_s: tuple[float, float]) -> None:
            self.scale_uv, self.window_s = scale_uv, window_s

        @classmethod
        def from_settings(cls, settings) -> ToyReward:
            return cls(settings.scale_uv, settings.window_s)

        def __call__(self, epoch: EpochData) -> Reward:
            CALLS["reward"] = CALLS.get("reward", 0) + 1
            amp = float(epoch_window(epoch, self.window_s).mean())
            return Reward(1.0 / (1.0 + np.exp(-amp / self.scale_uv)), {"amp_uv": amp})

    class ToyBackend(Backend):
        """Flat-colour images; the embedding is the colour."""

        name = "toy_backend"
        embed_dim = 3

        def __init__(self, size: int, seed: int) -> None:
            self.size, self.seed = size, seed
            self.model_ids = {"toy": "flat colours"}

        @classmethod
        def from_settings(cls, settings, *, random_weights: bool = False) -> ToyBackend:
            return cls(settings.procedural.size, settings.seed)

        def stimulus_pool(self, settings) -> ImagePool:
            rng = np.random.default_rng(self.seed)
            colours = rng.uniform(0, 1, (settings.procedural.pool_size, 3)).astype(np.float32)
            images = self.generate(colours, list(range(len(colours))))
            ids = [f"toy-{i:03d}" for i in range(len(colours))]
            return ImagePool(ids, self.embed(images), lambda i: images[i].copy())

        def embed(self, images) -> np.ndarray:
            return np.stack([np.asarray(im, np.float32).mean((0, 1)) / 255 for im in images])

        def generate(self, embeddings, seeds) -> list[Image.Image]:
            CALLS["generate"] = CALLS.get("generate", 0) + 1
            rgb = (np.clip(np.asarray(embeddings), 0, 1) * 255).astype(np.uint8)
            return [Image.new("RGB", (self.size, self.size), tuple(int(v) for v in c)) for c in rgb]

    class ToyFamily(SubjectFamily):
        """Twice the drawn frontal alpha asymmetry, nothing in the LPP."""

        name = "toy_family"

        @classmethod
        def carriers(cls, draws: FamilyDraws) -> AffectCarriers:
            CALLS["family"] = CALLS.get("family", 0) + 1
            return AffectCarriers(faa=2.0 * draws.faa, lpp_valence=0.0)

    register_backend(BackendSpec(BACKEND, "flat colours (a toy)", stand_in=True))
    register_family(FAMILY, "twice the frontal alpha asymmetry (a toy)")


@pytest.fixture(scope="module")
def toys():
    """The toys registered for this module's tests only, then taken out again."""
    _define_toys()
    yield
    RewardSettings.registry.pop(REWARD)
    RewardMode.registry.pop(REWARD)
    Backend.registry.pop(BACKEND)
    BACKENDS.pop(BACKEND)
    SubjectFamily.registry.pop(FAMILY)
    SUBJECT_FAMILIES.pop(FAMILY)


def _toy_protocol(tmp_path, calibration: int = 6):
    """The pilot protocol on the toys, small enough for seconds."""
    text = (PROTOCOL_DIR / "pilot.toml").read_text()
    text = text.replace('mode = "personal"', 'mode = "toy_reward"\nscale_uv = 3.0')
    text = text.replace("n_trials = 48", f"n_trials = {calibration}", 1)
    path = tmp_path / "toy.toml"
    path.write_text(text)
    p = load_protocol(path)
    gen = p.generation.model_dump()
    gen["backend"] = BACKEND
    gen["procedural"].update(size=32, pool_size=24)
    gen["gp"].update(fit_iters=5, refit_iters=1)
    gen["heuristic"].update(inner_steps=2)
    bm = {**p.brain_model.model_dump(), "family": FAMILY}
    return write_protocol(p.with_overrides({"generation": gen, "brain_model": bm}), path)


def test_the_protocol_accepts_the_toys_and_keeps_their_settings(toys, tmp_path):
    p = _toy_protocol(tmp_path)  # written as a session writes protocol.toml, read back
    assert REWARD in reward_modes()
    assert type(p.generation.reward).__name__ == "ToySettings"
    assert p.generation.reward.scale_uv == 3.0
    assert p.generation.reward.oracle == "valence"  # the base class's properties
    assert (p.generation.backend, p.brain_model.family) == (BACKEND, FAMILY)
    assert reward_class(REWARD).mode == REWARD
    assert backend_class(BACKEND).name == BACKEND
    assert family_class(FAMILY).name == FAMILY
    path = tmp_path / "bad.toml"
    path.write_text('[generation.reward]\nmode = "toy_reward"\nscale = 3.0\n')
    with pytest.raises(ProtocolError) as err:
        load_protocol(path)
    assert err.value.field == "generation.reward.scale"


def test_one_offline_closed_loop_round_runs_on_the_toys(toys, tmp_path):
    import torch

    p = _toy_protocol(tmp_path)
    threads = torch.get_num_threads()
    CALLS.clear()
    try:
        out = run_participant(
            {
                "subject": 1000,
                "family": FAMILY,
                "rewards": [REWARD],
                "rounds": 1,
                "round0": 8,
                "protocol": p.source,
                "oracle_noise": 0.0,
            }
        )
    finally:
        torch.set_num_threads(threads)
    assert out["family"] == FAMILY
    loop = out["by_reward"][REWARD]
    assert len(loop["curve"]) == 2  # round 0 and one closed-loop round
    assert np.isfinite(loop["gain_a"])
    assert loop["gain_b"] is not None  # round 1: images the loop chose, random ones beside
    # the toys did the work: the family made the subject, the backend the images, the
    # reward scored the calibration epochs and both rounds' epochs
    assert CALLS["family"] >= 1
    assert CALLS["generate"] >= 2  # the pool, then round 1's children
    assert CALLS["reward"] == 6 + 2 * 8
