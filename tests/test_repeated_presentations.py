"""Each generated image shown several times (``presentations``): what the session keeps of it.

The presentation's order and the worker's averaging are tested with their parts
(``test_presentation_parts``, ``test_generation_parts``) and live (``test_presentation``);
here the session's dataset and the offline loop of the benches.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from app.bench.loop import apply_changes
from app.evaluation.table1 import Recorder, run_loop, subject_protocol
from app.presentation.images import presentation_order
from experiment_protocols import PROTOCOL_DIR, load_protocol


def test_the_dataset_holds_an_image_shown_twice_once_with_its_mean_reward(tmp_path):
    from app.session_outputs import export_dataset
    from workers.session_store import SessionStore

    protocol = load_protocol()
    session = tmp_path / "session"
    store = SessionStore(session).open(role="presentation", protocol=protocol)
    images = []
    for k in range(3):
        path = session / "images" / "round-00" / f"img-{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 40 * k, np.uint8)).save(path)
        images.append(path)
    shown = [(0, 0.2), (1, 0.9), (2, 0.5), (0, 0.6), (1, 0.7), (2, 0.1)]  # two passes
    for tid, (k, reward) in enumerate(shown):
        store.log("trial", trial=tid, block="closed_loop", round=0, image=str(images[k]),
                  label=None, rating=None, dropped_frames=0)  # fmt: skip
        store.log("reward", trial_id=tid, reward=reward, details={})
        store.log("epoch", trial_id=tid, bad=False, latency_ms=5.0)
    store.close("completed")

    out = export_dataset(session, protocol)

    lines = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(x["trials"], x["trial_rewards"]) for x in lines] == [
        ([1, 4], [0.9, 0.7]),
        ([0, 3], [0.2, 0.6]),
        ([2, 5], [0.5, 0.1]),
    ]
    assert [x["reward"] for x in lines] == pytest.approx([0.8, 0.4, 0.3])
    assert [x["label"].split("_")[0] for x in lines] == ["high", "high", "low"]  # median 0.4
    assert len(list(out.rglob("*.png"))) == 3


def test_the_offline_loop_shows_each_image_k_times_and_keeps_their_mean():
    base = load_protocol(PROTOCOL_DIR / "pilot.toml")
    protocol = apply_changes(
        subject_protocol(base, 3),
        {
            "presentation.blocks.closed_loop.presentations": 3,
            "generation.procedural.pool_size": 48,
            "generation.procedural.fit_samples": 256,
            "generation.heuristic.inner_steps": 2,
        },
    )
    rec = Recorder(protocol)
    returned: list[float] = []

    def reward_fn(epoch):  # a reward that differs between presentations of one image
        returned.append(float(1 / (1 + np.exp(-epoch.data[:, -50:].mean()))))
        return returned[-1]

    loop = run_loop(protocol, rec, reward_fn, [4, 4], 3, progress=False)
    assert len(returned) == 2 * 4 * 3  # every presentation has its own epoch and reward
    assert loop.rewards.shape == (8,)
    assert loop.epochs.shape[0] == 8
    for r in range(2):
        order = np.asarray(presentation_order(4, 3, (protocol.generation.seed, r)))
        values = np.asarray(returned[12 * r : 12 * (r + 1)])
        means = [values[order == j].mean() for j in range(4)]
        np.testing.assert_allclose(loop.rewards[4 * r : 4 * (r + 1)], means)
        assert np.ptp(values) > 0
