"""eegs bench generation: the protocol's settings, honest rows, the full-size dry run."""

from __future__ import annotations

import json

import pytest
from conftest import run_eegs

from experiment_protocols import load_protocol


@pytest.mark.timeout(600)
def test_rows_hold_one_cycle_at_the_protocols_settings(tmp_path):
    out = tmp_path / "gen.json"
    res = run_eegs(
        "bench", "generation", "--backends", "procedural", "--trial-s", "0.02",
        "--out", str(out), timeout=560,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    fig = json.loads(out.read_text())
    g = load_protocol().generation
    assert fig["inner_steps"] == g.heuristic.inner_steps == 15
    assert fig["lightning_steps"] == g.sdxl.diffusion_steps == 8
    rows = fig["backends"]["procedural"]["rounds"]
    for n, row in rows.items():
        # the row's request is generated from the rewards of the row's own epochs
        assert row["request_round"] == row["epochs_round"] + 1
        assert row["n_images"] == int(n)
        # the worker's round starts once the last reward is in, which is before its reply
        # reaches the client (the reply travels while the round runs), so the round fits
        # between the last epoch leaving the client and the batch arriving
        waited = row["ready_after_last_reward_ms"] + row["last_epoch_round_trip_ms"]
        assert waited >= row["worker_round_ms"]
    budget = fig["round_budget"]
    assert budget["render"]["generations_per_round"] == 15
    assert budget["embedding"]["generations_per_round"] == 1
    assert budget["render"]["meets_goal"] == "no"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_full_size_dry_run_loads_through_the_lab_path(tmp_path):
    """The real SDXL architecture, random weights, written, loaded and rendered (slow)."""
    out = tmp_path / "dry.json"
    res = run_eegs(
        "bench", "generation", "--full-size", "--random-weights", "--device", "cpu",
        "--out", str(out), timeout=3500,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    dry = json.loads(out.read_text())["full_size_dry_run"]
    print(json.dumps(dry, indent=1))  # the figures README quotes (pytest -m slow -s)
    assert dry["images_valid"] == dry["batch"] == 4
    assert dry["components_s"]["unet_calls"] == dry["lightning_steps"] == 1
    assert dry["files"] == 21  # SDXL base (15 files from model_index.json) + 3 repos (6)
    # no float32 random UNet (10 GB) next to the loaded one: the load stays well below
    assert dry["phases"]["load"]["peak_rss_gb"] < 20
