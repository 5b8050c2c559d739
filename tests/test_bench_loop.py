"""eegs bench loop: a small population (2 participants x 2 rounds) on a local Dask cluster."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from app.bench.loop import (
    ON_REQUEST,
    apply_changes,
    by_verdict,
    combine,
    default_families,
    default_rewards,
    vary_variants,
)
from experiment_protocols import PROTOCOL_DIR, load_protocol
from workers.errors import InputError

REWARDS = default_rewards(load_protocol(PROTOCOL_DIR / "pilot.toml"))


@pytest.fixture
def small_pool(tmp_path):
    """The pilot protocol with a small procedural pool and embedding fit (most of the build)."""
    path = tmp_path / "pilot-small.toml"
    text = (PROTOCOL_DIR / "pilot.toml").read_text()
    path.write_text(text + "\n[generation.procedural]\npool_size = 64\nfit_samples = 256\n")
    return str(path)


@pytest.mark.timeout(600)
def test_a_small_population_gives_every_figure(processes, tmp_path, small_pool):
    out = tmp_path / "loop.json"
    proc = processes.eegs(
        "bench", "loop", "--participants", "2", "--rounds", "2", "--families", "mixed,lpp",
        "--rewards", ",".join(REWARDS + ON_REQUEST), "--workers", "2", "--out", str(out),
        "--protocol", small_pool, "--vary", "generation.reward.when_undecoded=stop",
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
        # the protocol stops the loop of a participant the estimator does not read: the
        # session ends after the round in flight (round 1); every other loop runs on
        stopped = p["personal"]["reward"] != "personal"
        for reward, r in p["by_reward"].items():
            curve = r["curve"]
            if reward == "personal" and stopped:
                assert (r["stopped_after"], r["planned"]) == (1, 2)
                assert len(curve) == 2
            else:
                assert "stopped_after" not in r
                assert len(curve) == 3  # round 0 + 2 rounds
            assert r["gain_a"] == pytest.approx(np.mean(curve[-2:]) - curve[0], abs=1e-3)
            if reward == "random":
                assert r["gain_b"] is None  # nothing chosen: no loop
        assert isinstance(p["personal"]["decodes"], bool)
        # round 0 is the same random pool sample for every reward of a participant
        assert len({round(r["curve"][0], 4) for r in p["by_reward"].values()}) == 1
    stops = {p["family"]: p["personal"]["reward"] != "personal" for p in fig["per_participant"]}
    assert any(stops.values())  # at lab realism 48 rated trials decode almost no one
    for fam, stopped in stops.items():
        assert fig["by_reward"]["personal"]["by_family"][fam]["stopped_share"] == float(stopped)
        assert fig["by_reward"]["random"]["by_family"][fam]["stopped_share"] == 0.0
    assert set(fig["goals"]) == {"mixed", "lpp"}
    for g in fig["goals"].values():  # the realistic goal implies its parts
        assert not g["realistic_goal_met"] or (g["ci_above_0"] and g["ge_2x_best_control"])
    assert (tmp_path / "loop.png").stat().st_size > 5_000
    # the session's length: the same gains read after each count of rounds, at their cost
    lpp = fig["by_reward"]["personal"]["by_family"]["lpp"]
    assert list(lpp["gain_a_by_rounds"]) == ["1", "2"]
    assert lpp["gain_a_by_rounds"]["2"]["mean"] == pytest.approx(lpp["gain_a_mean"], abs=2e-4)
    minutes = fig["participant_minutes_by_rounds"]
    assert list(minutes) == ["1", "2"]
    assert 0 < minutes["1"] < minutes["2"]
    assert fig["plot_by_rounds"] is None  # two rounds: no curve to draw
    # every participant was kept as it came, before the summary
    kept = [json.loads(line) for line in (tmp_path / "loop.participants.jsonl").open()]
    assert sorted(kept, key=lambda r: r["subject"]) == fig["per_participant"]


def test_gains_are_split_by_what_read_the_calibration():
    def row(fam, gain, decodes, r, p, reads=None):
        rec = {"decodes": decodes, "fallback_r": r, "fallback_p": p, "p_threshold": 0.05}
        if reads:
            rec["reads"] = reads
        return {"family": fam, "personal": rec, "by_reward": {"personal": {"gain_a": gain}}}

    rows = [row("lpp", 0.4, True, 0.0, 0.5), row("lpp", 0.1, False, 0.3, 0.01),
            row("lpp", -0.2, False, 0.3, 0.2), row("mixed", 0.3, False, 0.2, 0.02),
            row("mixed", 0.0, False, None, None),
            row("mixed", 0.5, False, 0.0, 1.0, reads="index"),  # as the session recorded
            {"family": "lpp", "personal": {}, "by_reward": {"personal": {"gain_a": 9.0}}},
            ]  # fmt: skip
    out = by_verdict(rows, "personal", ["lpp", "mixed"])
    assert out["lpp"]["estimator"]["n"] == 1
    assert out["lpp"]["estimator"]["gain_a_mean"] == 0.4
    assert out["lpp"]["index"]["gain_a_mean"] == 0.1
    assert out["lpp"]["neither"]["gain_a_mean"] == -0.2
    assert out["mixed"]["index"]["n"] == 2
    assert out["mixed"]["neither"]["n"] == 1
    assert [out["all"][v]["n"] for v in ("estimator", "index", "neither")] == [1, 3, 2]
    assert out["all"]["index"]["share_gt_0"] == 1.0


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
def test_the_noisy_oracle_without_noise_is_the_oracle(processes, tmp_path, small_pool):
    """And a sweep of the realism: the oracle reads no EEG, so its loop is the same at each."""
    out = tmp_path / "loop.json"
    proc = processes.eegs(
        "bench", "loop", "--participants", "1", "--rounds", "2", "--families", "lpp",
        "--rewards", "oracle,noisy_oracle", "--oracle-noise", "0", "--workers", "1",
        "--realism", "faint,clean", "--out", str(out), "--protocol", small_pool,
    )  # fmt: skip
    _, stderr = proc.communicate(timeout=280)
    assert proc.returncode == 0, stderr[-3000:]
    fig = json.loads(out.read_text())
    clean, faint = fig["per_participant"]  # in the presets' order, not the order asked
    assert (clean["variant"], faint["variant"]) == ("clean", "faint")
    assert clean["realism"] == "clean"
    assert clean["subject"] == faint["subject"]
    for p in (clean, faint):
        assert p["by_reward"]["noisy_oracle"] == p["by_reward"]["oracle"]  # the same loop
    assert clean["by_reward"]["oracle"] == faint["by_reward"]["oracle"]
    sweep = fig["sweep"]
    assert sweep["of"] == ["brain_model.realism", "brain_model.affect_gain", "brain_model.faa_gain"]
    assert sweep["variants"] == ["clean", "faint"]
    points = sweep["curve"]["oracle"]["lpp"]["points"]
    assert [p["variant"] for p in points] == ["clean", "faint"]
    assert (tmp_path / "loop.png").stat().st_size > 5_000
    bad = processes.eegs("bench", "loop", "--oracle-noise", "-1", "--out", str(out))
    _, stderr = bad.communicate(timeout=60)
    assert bad.returncode == 2
    assert "--oracle-noise" in stderr


def test_a_sweep_varies_any_protocol_key():
    """``--vary``: one variant per value, of a table's key or of a block's by its kind."""
    base = load_protocol(PROTOCOL_DIR / "pilot.toml")
    calib = vary_variants("presentation.blocks.calibration.n_trials=48, 96,200")
    assert [v.name for v in calib] == ["calibration.n_trials=48", "calibration.n_trials=96",
                                       "calibration.n_trials=200"]  # fmt: skip
    noise = vary_variants("generation.gp.noise_min=0.0001,0.05")
    both = combine([calib, noise])
    assert len(both) == 6
    assert both[1].name == "calibration.n_trials=48 generation.gp.noise_min=0.05"
    assert both[1].changes == {
        "presentation.blocks.calibration.n_trials": 48,
        "generation.gp.noise_min": 0.05,
    }
    p = apply_changes(base, both[5].changes)
    blocks = {b.kind: b for b in p.presentation.blocks}
    assert blocks["calibration"].n_trials == 200
    assert blocks["closed_loop"].n_trials == 8  # the rest as it was
    assert p.generation.gp.noise_min == 0.05
    assert p.generation.gp.lr == base.generation.gp.lr
    by_index = apply_changes(base, {"presentation.blocks.1.n_rounds": 9})
    assert by_index.presentation.blocks[1].n_rounds == 9
    assert apply_changes(base, {"brain_model.realism": "clean"}).brain_model.realism == "clean"
    for bad, match in (
        ("generation.gp.bogus=1", "no such key"),
        ("presentation.blocks.rest.n_trials=1", "no 'rest'"),
        ("generation.gp.noise_min", "expected KEY=V1"),
    ):
        with pytest.raises(InputError, match=match):
            apply_changes(
                base, {k: v for var in vary_variants(bad) for k, v in var.changes.items()}
            )
    with pytest.raises(Exception, match="realism"):  # the protocol's own check of a value
        apply_changes(base, {"brain_model.realism": "bogus"})
