"""eegs bench loop: a small population (2 participants x 2 rounds) on a local Dask cluster."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from app.bench.loop import ON_REQUEST, default_families, default_rewards
from experiment_protocols import PROTOCOL_DIR, load_protocol

REWARDS = default_rewards(load_protocol(PROTOCOL_DIR / "pilot.toml"))


@pytest.mark.timeout(600)
def test_a_small_population_gives_every_figure(processes, tmp_path):
    out = tmp_path / "loop.json"
    proc = processes.eegs(
        "bench", "loop", "--participants", "2", "--rounds", "2", "--families", "mixed,lpp",
        "--rewards", ",".join(REWARDS + ON_REQUEST), "--workers", "2", "--out", str(out),
    )  # fmt: skip
    stdout, stderr = proc.communicate(timeout=560)
    assert proc.returncode == 0, stderr[-3000:]
    fig = json.loads(out.read_text())
    assert json.loads(stdout) == fig  # the JSON is what the command prints, last
    assert "2/2 participants" in stderr  # progress on long work
    assert set(fig["by_reward"]) == set(REWARDS + ON_REQUEST)
    for reward in REWARDS + ON_REQUEST:
        fams = fig["by_reward"][reward]["by_family"]
        assert set(fams) == {"mixed", "lpp"}
        for f in fams.values():
            assert f["n"] == 1
            assert {"gain_a_mean", "gain_a_ci95", "gain_b_mean", "gain_b_ci95"} <= set(f)
            assert 0 <= f["frac_improved"] <= 1
    for p in fig["per_participant"]:
        for reward, r in p["by_reward"].items():
            curve = r["curve"]
            assert len(curve) == 3  # round 0 + 2 rounds
            assert r["gain_a"] == pytest.approx(np.mean(curve[-2:]) - curve[0], abs=1e-3)
            if reward == "random":
                assert r["gain_b"] is None  # nothing chosen: no loop
        assert isinstance(p["personal"]["decodes"], bool)
        # round 0 is the same random pool sample for every reward of a participant
        assert len({round(r["curve"][0], 4) for r in p["by_reward"].values()}) == 1
    assert set(fig["goals"]) == {"mixed", "lpp"}
    assert (tmp_path / "loop.png").stat().st_size > 5_000


def test_no_reward_reads_the_family():
    """The participant's family is the simulator's secret: reward code never sees it."""
    import importlib

    import workers.generation.personal_fit
    from experiment_protocols.rewards import reward_modes
    from models.rewards.base import reward_class

    modules = [importlib.import_module(reward_class(m).__module__) for m in reward_modes()]
    import models.rewards.personal_cv
    import models.rewards.personal_features

    extra = (models.rewards.personal_cv, models.rewards.personal_features)
    for module in (*modules, *extra, workers.generation.personal_fit):
        assert "family" not in inspect.getsource(module), module.__name__
    assert REWARDS == ("personal", "asymmetry", "lpp", "random", "blind", "oracle")
    assert set(default_families()) == {"asymmetry", "lpp", "mixed", "weak"}


@pytest.mark.timeout(300)
def test_the_noisy_oracle_without_noise_is_the_oracle(processes, tmp_path):
    out = tmp_path / "loop.json"
    proc = processes.eegs(
        "bench", "loop", "--participants", "1", "--rounds", "2", "--families", "lpp",
        "--rewards", "oracle,noisy_oracle", "--oracle-noise", "0", "--workers", "1",
        "--out", str(out),
    )  # fmt: skip
    _, stderr = proc.communicate(timeout=280)
    assert proc.returncode == 0, stderr[-3000:]
    (p,) = json.loads(out.read_text())["per_participant"]
    assert p["by_reward"]["noisy_oracle"] == p["by_reward"]["oracle"]  # the same loop exactly
    bad = processes.eegs("bench", "loop", "--oracle-noise", "-1", "--out", str(out))
    _, stderr = bad.communicate(timeout=60)
    assert bad.returncode == 2
    assert "--oracle-noise" in stderr
