"""`eegs bench estimator`: the anchors, the draws and their scoring, the command."""

from __future__ import annotations

import json

import mne
import numpy as np
import pandas as pd
import pytest
from conftest import run_eegs
from test_personal_reward import CH, SFREQ, TMIN, dataset

from models.decoders.anchors import anchor_oof, median_split, window_means
from models.decoders.decodability import (
    analytic_p,
    anchor_estimator,
    participant_draws,
    personal_estimator,
)
from models.rewards.personal import stratified_folds

pytestmark = pytest.mark.timeout(180)


def _arrays(epochs):
    return np.stack([e.data for e in epochs]).astype(np.float64)


def test_median_split_keeps_two_classes():
    assert list(median_split(np.array([3, 7, 7, 3, 7]))) == [0, 1, 1, 0, 1]
    assert list(median_split(np.array([1, 2, 3, 4]))) == [0, 0, 1, 1]
    assert list(median_split(np.array([5, 5, 5, 6]))) == [0, 0, 0, 1]


def test_anchors_read_what_they_should():
    # valence in a parietal ERP only: the trained anchors find it, the asymmetry index not
    epochs, valence, ratings = dataset(96, seed=3, effect=2.0, alpha=False)
    X = _arrays(epochs)
    folds = stratified_folds(ratings, 5, 0)
    feats = window_means(X, SFREQ, TMIN, [(0.4, 0.6), (5.0, 6.0)])  # the second: outside
    assert feats.shape == (96, len(CH))
    for name in ("lda", "xdawn_ts"):
        out = anchor_oof(name, X, ratings, folds, CH, SFREQ, TMIN)
        assert np.corrcoef(out, ratings)[0, 1] > 0.4, name
    faa = anchor_oof("faa", X, ratings, folds, CH, SFREQ, TMIN)
    assert abs(np.corrcoef(faa, ratings)[0, 1]) < 0.3
    # valence in the frontal alpha balance: the index reads it, whatever the folds
    epochs, _, ratings = dataset(96, seed=4, effect=1.5)
    faa = anchor_oof("faa", _arrays(epochs), ratings, folds, CH, SFREQ, TMIN)
    assert np.corrcoef(faa, ratings)[0, 1] > 0.4
    with pytest.raises(ValueError, match="no homologous frontal pair"):
        anchor_oof("faa", X, ratings, folds, ["Cz", "Pz"] * 8, SFREQ, TMIN)


def test_draws_give_every_estimator_the_same_trials_and_a_null():
    epochs, _, ratings = dataset(60, seed=5, effect=2.0, alpha=False)
    X = _arrays(epochs)
    seen = []

    def spy(draw):
        seen.append((draw.ratings.copy(), draw.folds.copy()))
        return draw.ratings + 0.0, None  # a perfect estimator

    estimators = {"spy": spy, "lda": anchor_estimator("lda"),
                  "personal": personal_estimator(permutations=50)}  # fmt: skip
    rows = participant_draws(X, ratings, CH, SFREQ, TMIN, (1, 9), [24, 48, 96], 2, estimators)
    assert {r["n_trials"] for r in rows} == {24, 48}  # 96 > the 60 trials there are
    assert len(rows) == 2 * 2 * 2 * 3  # sizes x draws x (real, null) x estimators
    spy_rows = [r for r in rows if r["estimator"] == "spy"]
    assert all(r["r"] == pytest.approx(1.0) for r in spy_rows if not r["null"])
    assert all(r["auc"] == 1.0 and r["p_rule"] == "analytic" for r in spy_rows)
    # the permuted draws are the same trials with the ratings shuffled, folds re-stratified
    assert sorted(seen[1][0]) == sorted(seen[0][0])
    assert not np.array_equal(seen[1][0], seen[0][0])
    pers = [r for r in rows if r["estimator"] == "personal"]
    assert all(r["p_rule"] == "permutation" for r in pers)
    assert all(0 < r["p"] <= 1 for r in pers)
    real48 = [r for r in pers if r["n_trials"] == 48 and not r["null"]]
    assert all(r["decodes"] and r["r"] > 0.3 for r in real48)
    assert analytic_p(0.0, 50) == pytest.approx(0.5)
    assert analytic_p(0.4, 50) < 0.01


def test_bench_estimator_on_an_epochs_file(tmp_path):
    epochs, _, ratings = dataset(40, seed=6, effect=2.0, alpha=False)
    info = mne.create_info(CH, SFREQ, "eeg")
    ep = mne.EpochsArray(_arrays(epochs) * 1e-6, info, tmin=TMIN, verbose="error",
                         metadata=pd.DataFrame({"valence": ratings}))  # fmt: skip
    path = tmp_path / "lab-epo.fif"
    ep.save(path, verbose="error")
    out = tmp_path / "bench.json"
    res = run_eegs(
        "bench", "estimator", "--real", "", "--families", "", "--epochs", str(path),
        "--rating-column", "valence", "--sizes", "24,36", "--draws", "2",
        "--estimators", "personal,lda,faa", "--no-timing", "--json", "--out", str(out),
        timeout=170,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "[bench estimator]" in res.stderr  # progress
    data = json.loads(res.stdout)
    assert data == json.loads(out.read_text())
    rows = data["results"]
    assert len(rows) == 2 * 3
    for row in rows:
        for key in ("dataset", "participant", "n_trials", "estimator", "r_mean", "r_ci95",
                    "auc_mean", "decode_share", "false_positive_rate"):  # fmt: skip
            assert key in row
        assert row["participant"] == "lab"
        assert row["n_draws"] == 2
    personal = {r["n_trials"]: r for r in rows if r["estimator"] == "personal"}
    assert personal[36]["r_mean"] > 0.3
    assert personal[36]["p_rule"] == "permutation"
    assert data["p_rules"]["anchors"].startswith("analytic")
    assert "epochs-file/lab/36" in data["goals"]["per_participant_size"]
    assert (tmp_path / "bench.png").stat().st_size > 1000
    # the participant was kept as it finished, before the summary
    (kept,) = [json.loads(x) for x in (tmp_path / "bench.participants.jsonl").open()]
    assert kept["participant"] == "lab"
    cells = {(r["n_trials"], r["estimator"]) for r in kept["rows"]}
    assert cells == {(r["n_trials"], r["estimator"]) for r in rows}
    bad = run_eegs("bench", "estimator", "--real", "", "--families", "", "--epochs", str(path))
    assert bad.returncode == 2
    assert "--rating-column" in bad.stderr


def test_the_false_positive_rate_is_judged_per_size_over_every_participant():
    from app.bench.estimator import fpr_by_size, goals

    def row(participant: str, n: int, fpr: float, draws: int = 20) -> dict:
        return {"dataset": "real", "participant": participant, "n_trials": n,
                "estimator": "personal", "r_mean": 0.1, "false_positive_rate": fpr,
                "n_null_draws": draws}  # fmt: skip

    # 2 of 20 in one cell is no evidence of a rate over 7 %; 2 + 1 + 0 of 60 is 5 %
    rows = [row("a", 48, 0.1), row("b", 48, 0.05), row("c", 48, 0.0), row("a", 96, 0.15)]
    by_size = fpr_by_size(rows)
    assert by_size["48"]["decoded"] == 3
    assert by_size["48"]["null_draws"] == 60
    assert by_size["48"]["rate"] == 0.05
    assert by_size["48"]["goal_met"] is True
    assert by_size["48"]["ci95"][0] < 0.05 < by_size["48"]["ci95"][1]
    assert by_size["96"]["goal_met"] is False  # 3 of 20
    g = goals(rows, None)
    assert g["fpr_goal_met_everywhere"] is False
    assert g["fpr_goal_met_every_size"] is False
    assert goals(rows[:3], None)["fpr_goal_met_every_size"] is True
