"""Poster Fig. 3 from a session: the estimator against the participant's own ratings (b),
and the semantic similarity to the best-rated images against the reward (a)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from app.session_outputs import Trial, estimator_vs_ratings, semantic_similarity

pytestmark = pytest.mark.timeout(60)


def _trial(i: int, block: str, **kw) -> Trial:
    return Trial(trial=i, block=block, round=0, image=Path(f"/x/{i}.png"), label=None,
                 t_wall=0.0, **kw)  # fmt: skip


def test_estimator_vs_ratings_uses_the_validation_block_only():
    rng = np.random.default_rng(0)
    trials = []
    for i in range(12):
        pred = float(rng.uniform(1, 9))
        rating = int(np.clip(round(pred + rng.normal(0, 1)), 1, 9))
        trials.append(_trial(i, "validation", reward_details={"predicted_valence": pred},
                             rating={"valence": rating}))  # fmt: skip
    # calibration trials (the estimator's training set) and a fallback trial are left out
    trials.append(_trial(50, "calibration", reward_details={"predicted_valence": 9.0},
                         rating={"valence": 1}))  # fmt: skip
    trials.append(_trial(51, "validation", reward_details={"fallback": "asymmetry"},
                         rating={"valence": 1}))  # fmt: skip
    fig = estimator_vs_ratings(trials)
    assert fig["n"] == 12
    assert fig["r"] > 0.7
    assert fig["ci95"][0] < fig["r"] < fig["ci95"][1]
    assert estimator_vs_ratings([_trial(0, "validation", rating={"valence": 3})]) is None


def test_semantic_similarity_follows_the_reward(tmp_path):
    rng = np.random.default_rng(1)
    best = rng.normal(size=16)
    trials = []
    for i in range(24):
        w = i / 23  # the more like the best images, the higher the reward
        e = w * best + (1 - w) * rng.normal(size=16)
        rel = f"generation/round-01/img{i}.safetensors"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file({"embedding": e.astype(np.float32)}, str(tmp_path / rel))
        trials.append(_trial(i, "closed_loop", reward=w + rng.normal(0, 0.05),
                             provenance={"embedding": rel}))  # fmt: skip
    fig = semantic_similarity(tmp_path, trials)
    assert fig["n"] == 24
    assert fig["r"] > 0.5
    shuffled = [
        _trial(t.trial, t.block, reward=float(r), provenance=t.provenance)
        for t, r in zip(trials, rng.permutation([t.reward for t in trials]), strict=True)
    ]
    assert abs(semantic_similarity(tmp_path, shuffled)["r"]) < fig["r"]
