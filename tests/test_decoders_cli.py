"""`eegs evaluate`, `eegs train-encoder`, `eegs bench decoders` and brain-model decoding."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import run_eegs
from sklearn.metrics import f1_score

from workers.session_store import SessionStore

torch.set_num_threads(2)


def _write_session(root, subject: str, n: int, seed: int, extra_labels: int = 0) -> None:
    """A session directory with n labelled epochs (-0.2..1.0 s at 250 Hz, 17 channels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(-50, 251) / 250.0
    wave = 6.0 * np.exp(-(((t - 0.5) / 0.15) ** 2))
    store = SessionStore(root).open(role="test", subject=subject)
    names = [f"C{i}" for i in range(17)]
    for i in range(n + extra_labels):
        label = ("sadness", "amusement")[i % 2] if i < n else "neutral"
        x = rng.normal(0, 10, (17, 301)) + (label == "amusement") * wave
        meta = {
            "trial_id": i,
            "marker": {"label": label, "image": f"img-{i}.png"},
            "ch_names": names,
            "sfreq": 250.0,
            "tmin": -0.2,
            "quality": {"flags": []},
        }
        store.write_epoch(i, x, meta)
    store.close()


def test_evaluate_writes_table1_that_matches_sklearn(tmp_path):
    _write_session(tmp_path / "s1", "sub-01", 24, seed=1, extra_labels=3)
    _write_session(tmp_path / "s2", "sub-02", 24, seed=2)
    rng = np.random.default_rng(3)
    y = np.tile(["sadness", "amusement"], 12)
    X = rng.normal(0, 10, (24, 17, 250)).astype(np.float32)
    np.savez(tmp_path / "art.npz", X=X, y=y, sfreq=250.0, tmin=0.0)
    out = tmp_path / "out"
    res = run_eegs(
        "evaluate",
        "--dataset",
        "EEGS",
        str(tmp_path / "s1"),
        str(tmp_path / "s2"),
        "--dataset",
        "ArtPhoto",
        str(tmp_path / "art.npz"),
        "--out",
        str(out),
        "--folds",
        "3",
        "--seeds",
        "0,1",
        "--epochs",
        "15",
        "--save-decoder",
        str(tmp_path / "calib.safetensors"),
        timeout=400,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fitted atms_fc (random frozen encoder" in res.stdout
    folds = json.loads((out / "folds.json").read_text())
    rows = list(csv.DictReader((out / "table1.csv").open()))
    got = {(r["dataset"], r["classifier"], r["scheme"]) for r in rows}
    assert got == {
        ("EEGS", "ATM-S-FC", "within"),
        ("EEGS", "ATM-S-FC", "loso"),
        ("EEGS", "EEGNetv4", "within"),
        ("EEGS", "EEGNetv4", "loso"),
        ("ArtPhoto", "ATM-S-FC", "within"),
        ("ArtPhoto", "EEGNetv4", "within"),
    }
    names = {"ATM-S-FC": "atms_fc", "EEGNetv4": "eegnet"}
    for row in rows:
        sel = [
            f
            for f in folds["folds"]
            if (f["dataset"], f["classifier"], f["scheme"])
            == (row["dataset"], names[row["classifier"]], row["scheme"])
        ]
        expect_n = {"within": 2 * 3 * 2, "loso": 2 * 2}[row["scheme"]]
        if row["dataset"] == "ArtPhoto":
            expect_n = 3 * 2
        assert int(row["n_folds"]) == len(sel) == expect_n
        amuse = [f1_score(f["y_true"], f["y_pred"], pos_label=1, zero_division=0) for f in sel]
        sad = [f1_score(f["y_true"], f["y_pred"], pos_label=0, zero_division=0) for f in sel]
        avg = [f1_score(f["y_true"], f["y_pred"], average="macro", zero_division=0) for f in sel]
        for key, vals in (("f1_amuse", amuse), ("f1_sad", sad), ("f1_avg", avg)):
            assert float(row[f"{key}_mean"]) == pytest.approx(np.mean(vals), abs=1e-6)
            assert float(row[f"{key}_sd"]) == pytest.approx(np.std(vals, ddof=1), abs=1e-6)
        assert row["F1-avg"] == f"{np.mean(avg):.2f} ± {np.std(avg, ddof=1):.2f}"
    # every test epoch of a within-subject split is predicted once per seed
    within = [
        f
        for f in folds["folds"]
        if f["dataset"] == "EEGS"
        and f["scheme"] == "within"
        and f["classifier"] == "eegnet"
        and f["seed"] == 0
    ]
    assert sorted(i for f in within for i in f["test_index"]) == list(range(48))
    eegs_rows = [r for r in rows if r["dataset"] == "EEGS" and r["scheme"] == "within"]
    assert float(next(r for r in eegs_rows if r["classifier"] == "EEGNetv4")["f1_avg_mean"]) > 0.8
    md = (out / "table1.md").read_text()
    assert "| EEGS | EEGNetv4 | within-subject k-fold | 12 |" in md
    assert "randomly initialised frozen ATM-S encoder" in md
    assert "left out 3 epochs with other labels" in md
    pngs = sorted(out.glob("confusion-*.png"))
    assert len(pngs) == 6
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert folds["datasets"]["EEGS"]["subjects"] == ["sub-01", "sub-02"]
    # the calibration decoder is fitted on the first dataset and reloads for the loop
    from models.decoders.classifiers import load_classifier

    calib = load_classifier(tmp_path / "calib.safetensors")
    assert calib.kind == "atms_fc"
    assert calib.predict_proba(X[:3]).shape == (3, 2)


def test_evaluate_bad_input_exits_2(tmp_path):
    res = run_eegs("evaluate", "--dataset", "X", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert res.returncode == 2
    assert "nope: no such session directory" in res.stderr
    _write_session(tmp_path / "s", "sub-01", 0, seed=0, extra_labels=4)
    res = run_eegs("evaluate", "--dataset", "X", str(tmp_path / "s"), "--out", str(tmp_path))
    assert res.returncode == 2
    assert "no epoch is labelled 'amusement' or 'sadness'" in res.stderr
    _write_session(tmp_path / "ok", "sub-01", 8, seed=0)
    (tmp_path / "enc.pth").write_bytes(b"\x80\x04\x95" + b"junk" * 10)
    res = run_eegs(
        "evaluate",
        "--dataset",
        "X",
        str(tmp_path / "ok"),
        "--out",
        str(tmp_path),
        "--encoder",
        str(tmp_path / "enc.pth"),
        "--classifiers",
        "atms_fc",
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert "enc.pth" in res.stderr
    # decoder.channels naming a channel the recording lacks: which one, and the file
    proto = tmp_path / "channels.toml"
    proto.write_text('[decoder]\nchannels = ["C3", "Cz"]\n')
    res = run_eegs(
        "evaluate", "--protocol", str(proto), "--dataset", "X", str(tmp_path / "ok"),
        "--out", str(tmp_path),
    )  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert "decoder.channels ['Cz'] not in the recording's channels" in res.stderr
    assert str(tmp_path / "ok") in res.stderr


def test_train_encoder_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "enc"
    common = [
        "train-encoder",
        "--synthetic",
        "--synthetic-images",
        "60",
        "--synthetic-repetitions",
        "2",
        "--synthetic-snr",
        "0.2",
        "--batch-size",
        "32",
        "--out",
        str(out),
    ]
    res = run_eegs(*common, "--epochs", "1", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "epoch 1/1" in res.stdout
    assert "200-way top-1" in res.stdout
    for name in ("checkpoint.pt", "encoder.safetensors", "best.safetensors", "history.json"):
        assert (out / name).exists(), name
    first = (out / "encoder.safetensors").read_bytes()
    res = run_eegs(*common, "--epochs", "2", timeout=300)
    assert res.returncode == 2
    assert "--resume" in res.stderr
    res = run_eegs(*common, "--epochs", "2", "--resume", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming after epoch 1 of 2" in res.stdout
    assert "epoch 2/2" in res.stdout
    hist = json.loads((out / "history.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert {"2way", "200way"} <= set(hist[-1]["retrieval"])
    assert (out / "encoder.safetensors").read_bytes() != first
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2
    # the trained encoder is usable as the protocol's ATM-S checkpoint
    from models.decoders.atms import load_atms

    assert load_atms(out / "encoder.safetensors", n_channels=17, n_times=250).config.n_channels


def test_train_encoder_from_arrays_and_refuses_pickles(tmp_path):
    from models.decoders.clip_training import synthetic_pairs

    pairs = synthetic_pairs(30, 2, snr=0.2, seed=0)
    np.save(tmp_path / "eeg.npy", pairs.eeg.reshape(30, 2, 17, 250))
    torch.save({"img_features": torch.from_numpy(pairs.embeddings)}, tmp_path / "emb.pt")
    res = run_eegs(
        "train-encoder",
        "--eeg",
        str(tmp_path / "eeg.npy"),
        "--embeddings",
        str(tmp_path / "emb.pt"),
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "6-way top-1" in res.stdout  # 6 of 30 images held out
    np.save(tmp_path / "dict.npy", {"preprocessed_eeg_data": pairs.eeg}, allow_pickle=True)
    res = run_eegs(
        "train-encoder",
        "--eeg",
        str(tmp_path / "dict.npy"),
        "--embeddings",
        str(tmp_path / "emb.pt"),
        "--out",
        str(tmp_path / "p"),
    )
    assert res.returncode == 2
    assert "pickled dicts and are not unpickled" in res.stderr


def test_train_encoder_from_session_directories(tmp_path):
    _write_session(tmp_path / "s1", "sub-01", 60, seed=4)
    rng = np.random.default_rng(0)
    names = [f"stimuli/img-{i}.png" for i in range(60)]  # matched to markers by file name
    np.savez(tmp_path / "emb.npz", names=np.array(names), embeddings=rng.normal(size=(60, 64)))
    res = run_eegs(
        "train-encoder",
        "--session",
        str(tmp_path / "s1"),
        "--image-embeddings",
        str(tmp_path / "emb.npz"),
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "o"),
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "48 training trials of 17 ch x 250 samples (48 images); 12 held-out" in res.stdout
    from models.decoders.atms import load_atms

    assert load_atms(tmp_path / "o" / "best.safetensors").config.embed_dim == 64
    res = run_eegs("train-encoder", "--session", str(tmp_path / "s1"), "--out", str(tmp_path))
    assert res.returncode == 2
    assert "--image-embeddings" in res.stderr


@pytest.mark.timeout(400)  # two classifiers x 3 folds x 60 epochs, twice: ~45-80 s on 2 cores
def test_both_classifiers_decode_brain_model_valence():
    """Hidden oracle-valence labels are decoded from simulated EEG (clear SNR, 3 folds)."""
    from app.bench.decoders import KINDS, _f1, brain_model_set
    from experiment_protocols import load_protocol
    from models.brain.response import ATM_CHANNELS
    from models.decoders.classifiers import pick_channels

    dec = load_protocol().decoder
    dec.evaluation.folds, dec.evaluation.seeds = 3, [0]
    dec.atms_fc.epochs = dec.eegnet.epochs = 60
    X, y, info = brain_model_set(100, subject=0, snr=1.0)
    assert X.shape == (100, 64, 250)
    assert y.sum() == 50
    X = pick_channels(X, info["ch_names"], ATM_CHANNELS)[0]  # the cheaper 17-channel view
    f1 = _f1(X, y, dec)
    for kind in KINDS:
        assert f1[kind]["mean"] >= 0.65, f1
    # shuffled labels: the same pipeline is at chance, so the figure above is not a leak
    y_perm = np.random.default_rng(0).permutation(y)
    shuffled = _f1(X, y_perm, dec, kinds=("eegnet",))
    assert shuffled["eegnet"]["mean"] < 0.65, shuffled


def test_brain_model_set_labellings():
    """extremes: balanced classes from the two tails of the pool; median: a split of n."""
    from app.bench.decoders import brain_model_set

    X, y, info = brain_model_set(20, subject=0, snr=None, labels="extremes", pool=60)
    assert X.shape == (20, 64, 250)
    assert len(info["ch_names"]) == 64
    assert np.bincount(y).tolist() == [10, 10]
    assert info["labelling"] == "extremes"
    assert info["pool"] == 60
    assert info["sadness_max_valence"] < info["pool_median_valence"]
    assert info["pool_median_valence"] < info["amusement_min_valence"]
    assert not np.array_equal(y, np.sort(y))  # shuffled presentation order
    _, ym, med = brain_model_set(20, subject=0, snr=None, labels="median")
    assert np.bincount(ym).tolist() == [10, 10]
    assert med["pool"] == 20
    assert med["sadness_max_valence"] <= med["amusement_min_valence"]
    # the tails of a larger pool are further apart than the halves of the set itself
    gap = info["valence_mean"]["amusement"] - info["valence_mean"]["sadness"]
    assert gap > med["valence_mean"]["amusement"] - med["valence_mean"]["sadness"]
    with pytest.raises(ValueError, match="labels must be one of"):
        brain_model_set(20, subject=0, snr=None, labels="top")


def test_train_encoder_on_brain_model_subjects(tmp_path):
    """--brain-model: pairs simulated by other subjects, all 64 channels, for ATM-S-FC."""
    from models.decoders.atms import load_atms

    out = tmp_path / "enc"
    args = ["train-encoder", "--brain-model", "30", "31", "--brain-model-images", "12"]
    res = run_eegs(*args, "--epochs", "1", "--out", str(out), "--no-progress", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # 24 images, a fifth held out; one trial of 64 channels x 250 samples each
    assert "20 training trials of 64 ch x 250 samples (20 images); 4 held-out" in res.stdout
    history = json.loads((out / "history.json").read_text())
    assert history["data"]["source"] == "brain-model"
    assert history["data"]["subjects"] == [30, 31]
    encoder = load_atms(out / "encoder.safetensors", n_channels=64, n_times=250)
    assert encoder.config.embed_dim == 1024


def test_bench_decoders_runs(tmp_path):
    from models.decoders.atms import ATMS, ATMSConfig, save_atms

    encoder = save_atms(ATMS(ATMSConfig(n_channels=64)), tmp_path / "enc64.safetensors")
    res = run_eegs(
        "bench",
        "decoders",
        "--encoder",
        str(encoder),
        "--train-epochs",
        "5",
        "--n-epochs",
        "20",
        "--score-repeats",
        "5",
        "--skip-retrieval",
        "--skip-f1",
        "--out",
        str(tmp_path / "b.json"),
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "b.json").read_text())
    assert set(out["calibration_fit_s"]) == set(out["score_ms"]) == {"atms_fc", "eegnet"}
    # the issue's 17 x 250 figure, and the decoders' own channels (all 64 by default)
    assert set(out["calibration_fit_s_by_channels"]) == {"17", "64"}
    assert out["calibration_fit_s_by_channels"]["17"] == out["calibration_fit_s"]
    assert out["calibration_data"]["decoder_channels"] == 64
    assert all(v > 0 for v in out["score_ms"].values())
    assert out["encoder"] == str(encoder)  # --encoder: ATM-S-FC on the 64 channels
    assert out["calibration_data"]["labelling"] == "extremes"
