"""`eegs bench pilots`: live pilots over seeds, and the gains they share with the loop bench."""

from __future__ import annotations

import numpy as np
import pytest

from app.bench.pilots import summarise
from app.loop_gains import loop_gains

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


# the bench's real pilot: tests/test_pilot.py::test_pilot_two_rounds_end_to_end
