"""The session's length as a lever: gains read at each length, and the minutes each costs."""

from __future__ import annotations

import numpy as np
import pytest

from app.bench.loop import round_counts, summarise
from app.loop_gains import gain_a_at, loop_gains
from experiment_protocols import PROTOCOL_DIR, load_protocol
from experiment_protocols.participant_time import RATING_S_PER_SCALE, participant_minutes

pytestmark = pytest.mark.timeout(30)


def test_gain_a_at_the_full_length_is_the_sessions_gain():
    rng = np.random.default_rng(0)
    valence = rng.normal(size=6 * 8)
    rounds = np.repeat(np.arange(6), 8)
    g = loop_gains(valence, rounds, ["initial"] * 8 + ["child"] * 40)
    assert gain_a_at(g["curve"], 5) == g["gain_a"]
    c = g["curve"]
    assert gain_a_at(c, 3) == pytest.approx((c[2] + c[3]) / 2 - c[0], abs=1e-4)
    assert gain_a_at(c, 1) == pytest.approx((c[1] - c[0]) / 2, abs=1e-4)  # rounds 0 and 1
    assert gain_a_at(c, 0) == 0.0  # a session of round 0 alone (a one-round pilot)
    assert loop_gains(valence[:8], rounds[:8], ["initial"] * 8)["gain_a"] == 0.0
    for bad in (-1, 6):
        with pytest.raises(ValueError, match="rounds must be 0..5"):
            gain_a_at(c, bad)
    assert round_counts(12) == [1, 2, 3, 5, 10, 12]
    assert round_counts(2) == [1, 2]


def test_participant_minutes_follow_the_protocols_trials():
    p = load_protocol(PROTOCOL_DIR / "default.toml")
    t = p.presentation.timing
    trial_s = t.fixation_s + t.stimulus_s + t.iti_s
    per_round = next(b.n_trials for b in p.presentation.blocks if b.kind == "closed_loop")
    ten_more = participant_minutes(p, 30) - participant_minutes(p, 20)
    rests = 10 * per_round / p.presentation.rest_every_n_trials * 45.0  # a rest per 40 trials
    assert ten_more == pytest.approx((10 * per_round * trial_s + rests) / 60, abs=0.15)
    rated = sum(b.n_trials * b.n_rounds for b in p.presentation.blocks
                if b.kind in p.presentation.ratings.blocks)  # fmt: skip
    unrated = p.model_copy(deep=True)
    unrated.presentation.ratings.enabled = False
    saved = participant_minutes(p) - participant_minutes(unrated)
    assert saved == pytest.approx(rated * 2 * RATING_S_PER_SCALE / 60, abs=0.1)
    # the lab protocol's own session fits the hour it is meant for
    assert participant_minutes(p) <= 60
    # each image shown twice: every closed-loop trial counts twice
    twice = p.model_copy(deep=True)
    next(b for b in twice.presentation.blocks if b.kind == "closed_loop").presentations = 2
    more = participant_minutes(twice, 20) - participant_minutes(p, 20)
    shown = 21 * per_round  # round 0 and 20 rounds, once more
    assert more == pytest.approx((shown * trial_s + shown / 40 * 45.0) / 60, abs=0.8)


def _participant(subject: int, rise_from: int, slope: float) -> dict:
    """A participant whose personal loop gains ``slope`` per round from round ``rise_from``."""
    rng = np.random.default_rng(subject)
    n = 21
    rise = np.clip(np.arange(n) - rise_from + 1, 0, None) * slope
    curves = {
        "personal": rise + rng.normal(0, 0.02, n),
        "random": rng.normal(0, 0.02, n),
        "blind": rng.normal(0, 0.02, n),
    }
    curves = {k: [round(float(v), 4) for v in c - c[0]] for k, c in curves.items()}
    return {
        "subject": subject,
        "family": "lpp",
        "by_reward": {
            k: {"curve": c, "gain_a": gain_a_at(c, n - 1), "gain_b": None}
            for k, c in curves.items()
        },
    }


def test_the_fewest_rounds_that_meet_the_realistic_goal():
    rows = [_participant(s, rise_from=8, slope=0.03) for s in range(6)]
    fig = summarise(rows, ["personal", "random", "blind"], ["lpp"], "personal")
    by_rounds = fig["by_reward"]["personal"]["by_family"]["lpp"]["gain_a_by_rounds"]
    assert list(by_rounds) == ["1", "2", "3", "5", "10", "15", "20"]
    assert (
        by_rounds["20"]["mean"] == fig["by_reward"]["personal"]["by_family"]["lpp"]["gain_a_mean"]
    )
    # from round 8 on, +0.03 a round: +0.075 after 10 rounds, +0.225 after 15
    assert fig["goals"]["lpp"]["realistic_goal_first_met_at_rounds"] == 15
    assert fig["goals"]["lpp"]["realistic_goal_met"] is True
    flat = [_participant(s, rise_from=30, slope=0.03) for s in range(6)]
    fig = summarise(flat, ["personal", "random", "blind"], ["lpp"], "personal")
    assert fig["goals"]["lpp"]["realistic_goal_first_met_at_rounds"] is None


def test_a_control_that_ran_out_of_pool_images_is_read_where_it_ran():
    """Random search stops when the pool has no unseen image left; the goal reads it up to there."""
    rows = [_participant(s, rise_from=8, slope=0.03) for s in range(6)]
    for r in rows:
        short = r["by_reward"]["random"]["curve"][:11]  # 10 rounds, then no pool image left
        r["by_reward"]["random"] = {"curve": short, "gain_a": gain_a_at(short, 10), "gain_b": None}
    fig = summarise(rows, ["personal", "random", "blind"], ["lpp"], "personal")
    assert list(fig["by_reward"]["random"]["by_family"]["lpp"]["gain_a_by_rounds"])[-1] == "10"
    assert fig["goals"]["lpp"]["realistic_goal_first_met_at_rounds"] == 15


def test_a_session_the_protocol_stopped_keeps_its_gain_at_every_length():
    """``when_undecoded``: a stopped session ends after round 1 and counts with what it got."""
    rows = [_participant(s, rise_from=0, slope=0.05) for s in range(6)]
    for r in rows[:2]:
        short = r["by_reward"]["personal"]["curve"][:2]  # round 0 and the round in flight
        r["by_reward"]["personal"] = {
            "curve": short,
            "gain_a": gain_a_at(short, 1),
            "gain_b": None,
            "stopped_after": 1,
            "planned": 20,
        }
    fig = summarise(rows, ["personal", "random", "blind"], ["lpp"], "personal")
    lpp = fig["by_reward"]["personal"]["by_family"]["lpp"]
    assert lpp["stopped_share"] == pytest.approx(2 / 6, abs=1e-3)
    assert fig["by_reward"]["random"]["by_family"]["lpp"]["stopped_share"] == 0.0
    assert list(lpp["gain_a_by_rounds"])[-1] == "20"  # the lengths the others reached
    stopped = [gain_a_at(r["by_reward"]["personal"]["curve"], 1) for r in rows[:2]]
    ran = [gain_a_at(r["by_reward"]["personal"]["curve"], 20) for r in rows[2:]]
    assert lpp["gain_a_by_rounds"]["20"]["mean"] == pytest.approx(np.mean(stopped + ran), abs=1e-3)
    assert lpp["gain_a_mean"] == pytest.approx(np.mean(stopped + ran), abs=1e-3)
