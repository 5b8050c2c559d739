"""`eegs bench pilots`: live pilots over seeds, and the gains they share with the loop bench."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_eegs
from helpers import short_pilot_protocol

from app.bench.pilots import summarise
from app.loop_gains import loop_gains
from workers.session_store import read_events

pytestmark = pytest.mark.timeout(600)


def test_loop_gains_by_hand():
    valence = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, -0.5, 0.9])
    rounds = np.array([0, 0, 1, 1, 1, 2, 2, 2])
    kinds = ["initial", "initial", "child", "nearest", "random", "child", "random", "nearest"]
    g = loop_gains(valence, rounds, kinds)
    assert g["curve"] == [0.1, 0.6, pytest.approx(0.4667, abs=1e-4)]
    assert g["gain_a"] == pytest.approx((0.6 + 1.4 / 3) / 2 - 0.1, abs=1e-4)
    chosen = np.mean([0.4, 0.6, 1.0, 0.9])
    assert g["gain_b"] == pytest.approx(chosen - np.mean([0.8, -0.5]), abs=1e-4)
    assert loop_gains(valence[:5], rounds[:5], ["initial"] * 2 + ["child"] * 3)["gain_b"] is None


def test_the_live_goal_counts_seeds_whose_gain_b_is_positive():
    def rows(n_pos: int) -> list[dict]:
        return [
            {
                "seed": s,
                "minutes": 5.5,
                "gain_a": 0.1,
                "gain_b": 0.2 if s < n_pos else -0.1,
                "image_late": 0,
                "round_ready_p95_ms": -500.0 + s,
            }  # fmt: skip
            for s in range(10)
        ]

    met, missed = summarise(rows(8), None), summarise(rows(7), None)
    assert met["gain_b_positive"] == "8 of 10"
    assert met["goals"]["gain_b_positive_share_ge_0.8"] is True
    assert missed["goals"]["gain_b_positive_share_ge_0.8"] is False
    assert met["minutes_max"] == 5.5
    failed = summarise(rows(8) + [{"seed": 10, "error": "exit status 1"}], None)
    assert failed["failed_seeds"] == [10]
    assert failed["gain_b_positive"] == "8 of 11"  # a pilot that failed counts against
    assert failed["goals"]["gain_b_positive_share_ge_0.8"] is False


def test_the_participant_never_waits_in_any_pilot_or_the_goal_is_missed():
    rows = [
        {"seed": s, "gain_a": 0.1, "gain_b": 0.1, "image_late": 0, "round_ready_p95_ms": -600.0}
        for s in range(10)
    ]
    met = summarise(rows, None)
    assert met["goals"]["no_image_late_in_any_pilot"] is True
    assert met["goals"]["round_ready_p95_le_100_ms_in_every_pilot"] is True
    assert (met["image_late_total"], met["round_ready_p95_ms_max"]) == (0, -600.0)
    one_late = [*rows[:9], {**rows[9], "image_late": 1, "round_ready_p95_ms": 140.0}]
    missed = summarise(one_late, None)
    assert missed["goals"]["no_image_late_in_any_pilot"] is False
    assert missed["goals"]["round_ready_p95_le_100_ms_in_every_pilot"] is False
    assert (missed["image_late_total"], missed["round_ready_p95_ms_max"]) == (1, 140.0)
    failed = summarise([*rows, {"seed": 10, "error": "exit status 1"}], None)
    assert failed["goals"]["no_image_late_in_any_pilot"] is False
    assert failed["goals"]["round_ready_p95_le_100_ms_in_every_pilot"] is False


def test_bench_pilots_runs_a_real_pilot_and_reports_its_summary_gains(tmp_path):
    out = tmp_path / "pilots"
    res = run_eegs(
        "bench", "pilots", "--seeds", "1", "--first-seed", "5", "--rounds", "2",
        "--no-dashboard", "--protocol", str(short_pilot_protocol(tmp_path)),
        "--dir", str(out), timeout=540,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    figures = json.loads(res.stdout[res.stdout.index("{\n") :])
    assert figures["n"] == 1
    row = figures["per_seed"][0]
    summary = json.loads((out / "seed-5" / "summary.json").read_text())
    gains = summary["oracle_valence_gains"]
    # the summary's gains are the loop bench's, over the oracle's valence by round
    assert gains["curve"] == pytest.approx(summary["oracle_valence_by_round"], abs=1e-4)
    curve = gains["curve"]
    assert gains["gain_a"] == pytest.approx(np.mean(curve[-2:]) - curve[0], abs=1e-3)
    assert gains["gain_b"] is not None  # the pilot shows random images beside chosen ones
    assert (row["gain_a"], row["gain_b"]) == (gains["gain_a"], gains["gain_b"])
    late = [e for e in read_events(out / "seed-5" / "events.jsonl") if e["event"] == "image_late"]
    assert row["image_late"] == summary["image_late"] == len(late)
    assert row["round_ready_p95_ms"] == summary["round_ready_latency_ms"]["p95"]
    assert figures["gain_a_mean"] == row["gain_a"]
    assert figures["gain_b_positive"] in ("0 of 1", "1 of 1")
    assert 0 < row["minutes"] < 9
