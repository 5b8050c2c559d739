"""`eegs reproduce-table1`: the poster's Table 1 on the brain model, end to end (tiny)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import run_eegs
from sklearn.metrics import f1_score

from app.evaluation.table1_report import BASELINE, EEGS, POSTER_TABLE1, verdict
from app.pilot import PILOT_PROTOCOL

SEED = 3


@pytest.fixture(scope="module")
def table1(tmp_path_factory):
    """One tiny run: one subject, 16 images per set, 2 rounds, 2-fold CV, 1 epoch."""
    root = tmp_path_factory.mktemp("table1")
    out = root / "out"
    # the pilot protocol with a smaller procedural embedding fit and pool (faster start)
    protocol = root / "pilot-small.toml"
    protocol.write_text(
        PILOT_PROTOCOL.read_text()
        + "\n[generation.procedural]\nsize = 128\nfit_samples = 256\npool_size = 64\n"
    )
    res = run_eegs(
        "reproduce-table1",
        "--out",
        str(out),
        "--protocol",
        str(protocol),
        "--seeds",
        str(SEED),
        "--n-images",
        "16",
        "--rounds",
        "2",
        "--epochs",
        "1",
        "--folds",
        "2",
        timeout=150,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


@pytest.mark.timeout(170)
def test_writes_table1_beside_the_poster(table1):
    out, res = table1
    assert "loop round 2/2" in res.stderr  # progress on the console
    with (out / "table1.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["dataset"], r["classifier"]) for r in rows] == [
        (BASELINE, "ATM-S-FC"),
        (BASELINE, "EEGNetv4"),
        (EEGS, "ATM-S-FC"),
        (EEGS, "EEGNetv4"),
    ]
    for r in rows:
        for col in ("F1-Amuse", "F1-Sad", "F1-avg"):
            assert 0.0 <= float(r[col].split(" ± ")[0]) <= 1.0
        poster = POSTER_TABLE1[r["poster_dataset"]][r["classifier"]]
        got = (float(r["poster_f1_amuse"]), float(r["poster_f1_sad"]), float(r["poster_f1_avg"]))
        assert got == poster
        assert r["f1_avg_by_seed"].startswith(f"sim-{SEED}:")
    assert {r["poster_dataset"] for r in rows} == {"ArtPhoto", "EEGS (Ours)"}
    # the pilot's personal reward chases the rated valence (amusement): classes named after it
    assert (rows[2]["class1"], rows[2]["class0"]) == ("high_amusement", "low_amusement")
    assert (rows[0]["class1"], rows[0]["class0"]) == ("amusement", "sadness")

    md = (out / "table1.md").read_text()
    assert "| Dataset | Classes (1 vs 0) | Classifier | F1-Amuse ↑ | F1-Sad ↑ | F1-avg ↑" in md
    assert "**Verdict.** Figure" in md
    assert "randomly initialised frozen ATM-S encoder" in md
    assert "own pseudo reward estimator" in md  # what the EEGS classes are, said
    assert "Decoders: 64 channels (decoder.channels: all of the brain model)" in md
    assert "Oracle check" in md
    result = json.loads((out / "table1.json").read_text())
    assert result["verdict"]["sentence"] in md
    assert result["settings"]["seeds"] == [SEED]
    assert len(result["confusion_matrices"]) == 4
    assert all((out / name).is_file() for name in result["confusion_matrices"])
    assert "Table 1 reproduced" in res.stdout


@pytest.mark.timeout(170)
def test_f1_recomputed_from_fold_predictions(table1):
    out, _ = table1
    result = json.loads((out / "table1.json").read_text())
    with (out / "table1.csv").open() as fh:
        rows = {(r["dataset"], r["classifier"]): r for r in csv.DictReader(fh)}
    names = {"atms_fc": "ATM-S-FC", "eegnet": "EEGNetv4"}
    by_row: dict = {}
    for fold in result["folds"]:
        # the fold's labels are those of the saved recording at its test indices
        rec = np.load(
            out / f"seed-{SEED}" / f"{'eegs' if fold['dataset'] == EEGS else 'baseline'}.npz"
        )
        assert fold["y_true"] == rec["y"][fold["test_index"]].tolist()
        yt, yp = fold["y_true"], fold["y_pred"]
        amuse = f1_score(yt, yp, pos_label=1, zero_division=0)
        sad = f1_score(yt, yp, pos_label=0, zero_division=0)
        by_row.setdefault((fold["dataset"], names[fold["classifier"]]), []).append(
            (amuse, sad, (amuse + sad) / 2)
        )
    assert set(by_row) == set(rows)
    for key, scores in by_row.items():
        mean = np.mean(scores, axis=0)
        row = rows[key]
        assert int(row["n_folds"]) == len(scores) == 2
        for i, col in enumerate(("f1_amuse_mean", "f1_sad_mean", "f1_avg_mean")):
            assert float(row[col]) == pytest.approx(mean[i], abs=1e-6)


@pytest.mark.timeout(170)
def test_recordings_are_fresh_and_readable_by_evaluate(table1, tmp_path):
    out, _ = table1
    d = out / f"seed-{SEED}"
    loop, eegs, base = (np.load(d / f) for f in ("loop.npz", "eegs.npz", "baseline.npz"))
    # same number of images, same simulated subject, both classes balanced
    assert len(eegs["y"]) == len(base["y"]) == 16
    assert set(eegs["subject"]) == set(base["subject"]) == {f"sim-{SEED}"}
    assert np.bincount(eegs["y"]).tolist() == np.bincount(base["y"]).tolist() == [8, 8]
    # the EEGS set is exactly what the loop showed, recorded again with new noise
    assert sorted(eegs["image"].tolist()) == sorted(loop["image"].tolist())
    assert int(eegs["noise_seed"]) not in loop["noise_seed"].tolist()
    assert int(eegs["noise_seed"]) != int(base["noise_seed"])
    loop_epoch = dict(zip(loop["image"].tolist(), loop["X"], strict=True))
    assert eegs["X"].shape == loop["X"].shape
    # the decoders read decoder.channels: [] = all 64 channels of the brain model
    assert eegs["X"].shape[1] == len(eegs["ch_names"]) == len(base["ch_names"]) == 64
    for image, x in zip(eegs["image"].tolist(), eegs["X"], strict=True):
        old = loop_epoch[image]
        assert np.abs(x - old).max() > 1.0  # µV: a different trial, not a copy
        assert abs(np.corrcoef(x.ravel(), old.ravel())[0, 1]) < 0.9
    # labels of the EEGS set: reward median split, as the dataset export makes them
    reward = dict(zip(loop["image"].tolist(), loop["reward"], strict=True))
    median = np.median(loop["reward"])
    for image, y in zip(eegs["image"].tolist(), eegs["y"], strict=True):
        assert y == int(reward[image] >= median)
        assert image.split("/")[-2] == ("high_amusement" if y else "low_amusement")
        assert (out / image).is_file()
    for image in base["image"].tolist():
        assert (out / image).is_file()

    res = run_eegs(
        "evaluate",
        "--dataset",
        "EEGS",
        str(d / "eegs.npz"),
        "--out",
        str(tmp_path / "ev"),
        "--classifiers",
        "atms_fc",
        "--folds",
        "2",
        "--seeds",
        "0",
        "--epochs",
        "1",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "ev" / "table1.csv").is_file()


def _records(f1: dict[tuple[str, str, int], float]) -> list[dict]:
    return [
        {"dataset": ds, "classifier": kind, "subject": f"sim-{s}", "f1_avg": v}
        for (ds, kind, s), v in f1.items()
    ]


def test_verdict_over_seeds():
    eegnet_better = {(EEGS, "eegnet", s): 0.7 for s in range(5)}
    eegnet_better |= {(BASELINE, "eegnet", s): 0.6 if s < 4 else 0.75 for s in range(5)}
    eegnet_better |= {(EEGS, "atms_fc", s): 0.5 for s in range(5)}
    eegnet_better |= {(BASELINE, "atms_fc", s): 0.55 for s in range(5)}
    v = verdict(_records(eegnet_better), ["atms_fc", "eegnet"])
    assert v["reached"] is True
    assert v["EEGNetv4"]["eegs_higher"]
    assert not v["ATM-S-FC"]["eegs_higher"]
    assert v["EEGNetv4"]["seeds_eegs_higher"] == 4
    assert v["EEGNetv4"]["mean_difference"] == pytest.approx(0.07)
    assert v["sentence"].startswith("Figure reached")
    assert "EEGNetv4" in v["sentence"]

    # a higher mean carried by one seed is not "higher over seeds"
    one_seed = {(EEGS, "eegnet", s): 0.9 if s == 0 else 0.55 for s in range(5)}
    one_seed |= {(BASELINE, "eegnet", s): 0.6 for s in range(5)}
    v = verdict(_records(one_seed), ["eegnet"])
    assert v["EEGNetv4"]["mean_difference"] > 0
    assert v["reached"] is False
    assert v["sentence"].startswith("Figure NOT reached")

    # most seeds higher and a positive mean, but within the noise: not a result either
    noisy = {(EEGS, "eegnet", s): 0.6 + d for s, d in enumerate([0.2, 0.01, 0.01, -0.15, 0.01])}
    noisy |= {(BASELINE, "eegnet", s): 0.6 for s in range(5)}
    v = verdict(_records(noisy), ["eegnet"])
    assert v["EEGNetv4"]["seeds_eegs_higher"] == 4
    assert v["EEGNetv4"]["paired_t_p_one_sided"] > 0.05
    assert v["reached"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-images", "15"], "--n-images must be even"),
        (["--classifiers", "svm"], "--classifiers: unknown"),
        (["--rounds", "9", "--n-images", "10"], "needs >= 2 images per round"),
    ],
)
def test_bad_options_exit_2(tmp_path, args, message):
    res = run_eegs("reproduce-table1", "--out", str(tmp_path / "o"), *args, timeout=60)
    assert res.returncode == 2
    assert message in res.stderr
