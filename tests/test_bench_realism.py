"""`eegs bench realism`: the brain model's decodability beside the real recordings' range."""

from __future__ import annotations

import json

import pytest
from conftest import run_eegs

from app.bench.realism import range_checks, real_range

pytestmark = pytest.mark.timeout(180)


def _row(participant: str, n: int, est: str, r: float, half: float = 0.1) -> dict:
    return {"participant": participant, "n_trials": n, "estimator": est, "r_mean": r,
            "r_ci95": [r - half, r + half]}  # fmt: skip


def test_the_real_range_spans_the_participants_best_anchors():
    real = [
        _row("s1", 48, "lda", 0.02), _row("s1", 48, "xdawn_ts", 0.10),
        _row("s2", 48, "lda", -0.05), _row("s2", 48, "xdawn_ts", -0.08),
        _row("s1", 200, "lda", 0.20), _row("s2", 200, "xdawn_ts", 0.15),
    ]  # fmt: skip
    span = real_range(real, [48, 200])
    assert span["48"]["mean_r"] == [-0.05, 0.10]  # each participant's best anchor
    assert span["48"]["ci95"] == pytest.approx([-0.15, 0.20])
    assert span["48"]["best_anchors"] == {"s1": "xdawn_ts", "s2": "lda"}
    brain = [
        {**_row("x", 48, "faa", 0.15), "realism": "lab", "family": "lpp"},
        {**_row("x", 200, "faa", 0.18), "realism": "lab", "family": "lpp"},
        {**_row("x", 48, "lda", 0.45), "realism": "clean", "family": "lpp"},
        {**_row("x", 200, "lda", 0.60), "realism": "clean", "family": "lpp"},
    ]
    checks = range_checks(brain, span, [48, 200])
    assert checks["lab"]["lpp"]["in_real_range"] is True
    assert checks["clean"]["lpp"]["in_real_range"] is False
    assert checks["clean"]["lpp"]["by_size"]["48"]["above"] is True


@pytest.mark.timeout(300)
def test_command_on_the_brain_model(tmp_path):
    out = tmp_path / "realism.json"
    res = run_eegs(
        "bench", "realism", "--real", "", "--realism", "faint,clean", "--families", "lpp",
        "--subjects", "1", "--draws", "2", "--sizes", "24", "--sim-trials", "40",
        "--estimators", "lda", "--out", str(out), timeout=280,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[bench realism]" in res.stderr  # progress
    data = json.loads(out.read_text())
    assert data == json.loads(res.stdout)
    keys = {(r["realism"], r["family"], r["n_trials"], r["estimator"]) for r in data["brain_model"]}
    assert keys == {("faint", "lpp", 24, "lda"), ("clean", "lpp", 24, "lda")}
    # the same subject at each level: only the affective signal differs
    assert [p["subject"] for p in data["participants"]] == [1000, 1000]
    assert (tmp_path / "realism.png").stat().st_size > 1000
    bad = run_eegs("bench", "realism", "--real", "", "--realism", "bogus", timeout=60)
    assert bad.returncode == 2
    assert "bogus" in bad.stderr
