"""ATM-S, its checkpoint loaders, the two emotion classifiers and CLIP training (real torch)."""

from __future__ import annotations

import io
import pickle
import re

import numpy as np
import pytest
import torch

from models.decoders.atms import ATMS, ATMSConfig, CheckpointError, load_atms, save_atms
from models.decoders.classifiers import (
    CLASS_NAMES,
    AtmsFcClassifier,
    AtmsFcSettings,
    ClassifierError,
    EegNetClassifier,
    EegNetSettings,
    channel_picks,
    crop_window,
    load_classifier,
    make_classifier,
    pick_channels,
    scaled_kernel_length,
)
from models.decoders.clip_training import (
    ClipTrainer,
    PairedEEG,
    clip_loss,
    retrieval_accuracy,
    synthetic_pairs,
)

torch.set_num_threads(2)


def _labelled(n: int, n_ch: int = 17, n_t: int = 250, amp: float = 6.0, seed: int = 0):
    """Noise (10 µV) plus, for class 1, a slow positive wave growing over channels."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    t = np.arange(n_t) / 250.0
    wave = np.exp(-(((t - 0.5) / 0.15) ** 2)) * amp
    gain = np.linspace(0.5, 1.5, n_ch)
    X = rng.normal(0, 10, (n, n_ch, n_t)) + y[:, None, None] * gain[None, :, None] * wave
    return X.astype(np.float32), y


# -- ATM-S ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n_ch", [17, 63])
def test_atms_embeds_17_and_63_channels(n_ch):
    model = ATMS(ATMSConfig(n_channels=n_ch)).eval()
    out = model(torch.randn(3, n_ch, 250))
    assert out.shape == (3, 1024)
    assert model.config.flat_dim == 1440  # 40 filters x 36 steps, as in the paper
    with pytest.raises(ValueError, match=rf"\(batch, {n_ch}, 250\)"):
        model(torch.randn(3, n_ch + 1, 250))


def test_atms_epoch_length_is_configurable():
    model = ATMS(ATMSConfig(n_channels=8, n_times=500)).eval()
    assert model(torch.randn(2, 8, 500)).shape == (2, 1024)


def test_safetensors_round_trip_gives_identical_embeddings(tmp_path):
    torch.manual_seed(1)
    model = ATMS(ATMSConfig(n_channels=17)).eval()
    path = save_atms(model, tmp_path / "enc.safetensors", note="test")
    loaded = load_atms(path, n_channels=17, n_times=250)
    x = torch.randn(4, 17, 250)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.checkpoint_metadata["note"] == "test"


def _to_author_layout(model: ATMS, conv_ff: bool) -> dict[str, torch.Tensor]:
    """Our state dict renamed to the ATM authors' ATMS keys, with their unused extras."""
    sd = model.state_dict()
    d = model.config.d_model
    out = {
        "encoder.enc_embedding.value_embedding.weight": sd["embedding.weight"],
        "encoder.enc_embedding.value_embedding.bias": sd["embedding.bias"],
        "encoder.enc_embedding.position_embedding.pe": torch.zeros(1, 5000, d),
        "encoder.enc_embedding.temporal_embedding.embed.weight": torch.zeros(d, 4),
        "encoder.enc_embedding.mask_token": torch.zeros(1, d),
        "encoder.enc_embedding.subject_embedding.subject_embedding.weight": torch.randn(10, d),
        "encoder.enc_embedding.subject_embedding.shared_embedding": sd["subject_token"],
        "encoder.enc_embedding.subject_embedding.mask_embedding": torch.zeros(1, d),
        "subject_wise_linear.0.weight": torch.zeros(250, d),
        "subject_wise_linear.0.bias": torch.zeros(250),
        "logit_scale": sd["logit_scale"],
    }
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.(.*)", k)
        if m:
            i, rest = m.groups()
            base = f"encoder.encoder.attn_layers.{i}."
            rest = re.sub(r"^attention\.(query|key|value|out)\.", r"attention.\1_projection.", rest)
            ff = re.match(r"ff([12])\.(weight|bias)", rest)
            if ff:
                name = f"{'conv' if conv_ff else 'linear'}{ff.group(1)}.{ff.group(2)}"
                v = v.unsqueeze(-1) if conv_ff and ff.group(2) == "weight" else v
                rest = name
            out[base + rest] = v
        elif k.startswith("norm."):
            out["encoder.encoder." + k] = v
        elif k.startswith("tsconv."):
            out["enc_eeg.0." + k] = v
        elif k.startswith("projection."):
            out["enc_eeg.0.projection.0." + k.split(".", 1)[1]] = v
        elif k.startswith("proj_in."):
            out["proj_eeg.0." + k.split(".", 1)[1]] = v
        elif k.startswith("proj_res.1."):
            out["proj_eeg.1.fn.1." + k.split(".", 2)[2]] = v
        elif k.startswith("proj_norm."):
            out["proj_eeg.2." + k.split(".", 1)[1]] = v
    return out


@pytest.mark.parametrize("conv_ff", [False, True])
def test_authors_checkpoint_layout_is_mapped_exactly(tmp_path, conv_ff):
    torch.manual_seed(2)
    ours = ATMS(ATMSConfig(n_channels=63, subject_token=True)).eval()
    for bn in (ours.tsconv[2], ours.tsconv[5]):  # non-trivial BatchNorm statistics
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    state = {f"module.{k}": v for k, v in _to_author_layout(ours, conv_ff).items()}
    path = tmp_path / "sub-08.pth"
    torch.save({"state_dict": state, "epoch": 40}, path)
    loaded = load_atms(path, n_channels=63, n_times=250)
    assert loaded.config.subject_token
    x = torch.randn(2, 63, 250)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours(x), rtol=0, atol=0)


def test_authors_checkpoint_subject_row_is_selectable(tmp_path):
    ours = ATMS(ATMSConfig(n_channels=17, subject_token=True)).eval()
    state = _to_author_layout(ours, conv_ff=False)
    table = "encoder.enc_embedding.subject_embedding.subject_embedding.weight"
    torch.save(state, tmp_path / "a.pth")
    loaded = load_atms(tmp_path / "a.pth", subject=3)
    assert torch.equal(loaded.subject_token, state[table][3:4])
    with pytest.raises(CheckpointError, match="subject 12 not in 0..9"):
        load_atms(tmp_path / "a.pth", subject=12)


def test_unknown_author_keys_are_refused(tmp_path):
    state = _to_author_layout(ATMS(ATMSConfig(subject_token=True)), conv_ff=False)
    state["enc_eeg.0.extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"odd\.pth: keys not in the ATM-S layout.*extra"):
        load_atms(tmp_path / "odd.pth")


def test_wrong_shape_checkpoint_fails_with_a_clear_message(tmp_path):
    model = ATMS(ATMSConfig(n_channels=63))
    path = save_atms(model, tmp_path / "enc63.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_atms(path, n_channels=17, n_times=250)
    msg = str(err.value)
    assert "enc63.safetensors" in msg
    assert "63 channels" in msg
    assert "n_channels = 17" in msg

    state = model.state_dict()
    state["proj_in.weight"] = torch.zeros(1024, 720)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_atms(tmp_path / "bad.pt")
    assert "'proj_in.weight' has shape (1024, 720), expected (1024, 1440)" in str(err.value)


class _Payload:
    """Unpickling this would create a file: the test proves it never happens."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_payload_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    state = ATMS().state_dict()
    state["evil"] = _Payload(str(marker))
    path = tmp_path / "evil.pth"
    with path.open("wb") as fh:
        torch.save(state, fh)
    with pytest.raises(CheckpointError, match=r"evil\.pth: holds pickled Python objects"):
        load_atms(path)
    assert not marker.exists()
    legacy = tmp_path / "legacy.pkl"
    legacy.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_atms(legacy)
    assert not marker.exists()


def test_garbage_and_foreign_safetensors_are_refused(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "junk.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="junk.bin: not a readable safetensors"):
        load_atms(tmp_path / "junk.bin")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="without EEGS ATM-S metadata"):
        load_atms(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        load_atms(tmp_path / "missing.safetensors")


# -- classifiers ---------------------------------------------------------------------------
def test_crop_window_and_kernel_scaling():
    x = np.arange(301, dtype=float)[None, None].repeat(2, 0)
    out = crop_window(x, 250.0, -0.2, (0.0, 1.0))
    assert out.shape == (2, 1, 250)
    assert out[0, 0, 0] == 50
    assert out[0, 0, -1] == 299
    with pytest.raises(ClassifierError, match="not inside the epochs"):
        crop_window(x, 250.0, 0.0, (0.0, 1.5))
    assert scaled_kernel_length(64, 128.0) == 64
    assert scaled_kernel_length(64, 250.0) == 125
    assert scaled_kernel_length(64, 500.0) == 250


def test_pick_channels_keeps_the_named_channels_in_their_order():
    x = np.arange(2 * 4 * 3, dtype=float).reshape(2, 4, 3)
    names = ["Fz", "Cz", "Pz", "Oz"]
    assert pick_channels(x, names, []) == (x, names)  # [] keeps every channel
    out, kept = pick_channels(x, names, ["oz", "Fz"])  # any case, the order asked for
    assert kept == ["Oz", "Fz"]
    np.testing.assert_array_equal(out, x[:, [3, 0]])
    np.testing.assert_array_equal(pick_channels(x[0], names, ["Cz"])[0], x[0, [1]])
    with pytest.raises(ClassifierError, match=r"\['F3', 'F4'\] not in the recording"):
        pick_channels(x, names, ["Fz", "F3", "F4"])
    with pytest.raises(ClassifierError, match="carry no channel names"):
        pick_channels(x, None, ["Fz"])
    assert channel_picks(names, []) == [0, 1, 2, 3]
    assert channel_picks(names, ["PZ", "Cz"]) == [2, 1]


@pytest.fixture(scope="module")
def fitted():
    """One fitted classifier of each kind on the same small data set (real training)."""
    X, y = _labelled(60, amp=8.0)
    Xt, yt = _labelled(40, amp=8.0, seed=1)
    fast_mlp = AtmsFcSettings(epochs=60, batch_size=16)
    fast_net = EegNetSettings(epochs=40, batch_size=16)
    clfs = {
        "atms_fc": AtmsFcClassifier(17, 250, 250.0, fast_mlp, seed=0).fit(X, y),
        "eegnet": EegNetClassifier(17, 250, 250.0, fast_net, seed=0).fit(X, y),
    }
    return clfs, Xt, yt


def test_classifiers_learn_the_label(fitted):
    clfs, Xt, yt = fitted
    acc = {k: float((c.predict(Xt) == yt).mean()) for k, c in clfs.items()}
    assert acc["eegnet"] >= 0.85, acc
    assert acc["atms_fc"] >= 0.65, acc  # a random frozen encoder: weaker, above chance
    for c in clfs.values():
        p = c.predict_proba(Xt)
        assert p.shape == (len(Xt), 2)
        assert np.allclose(p.sum(1), 1, atol=1e-5)
    assert CLASS_NAMES == ("sadness", "amusement")
    assert clfs["atms_fc"].random_encoder


@pytest.mark.parametrize("kind", ["atms_fc", "eegnet"])
def test_save_load_round_trip_gives_identical_predictions(fitted, tmp_path, kind):
    clfs, Xt, _ = fitted
    path = clfs[kind].save(tmp_path / f"{kind}.safetensors")
    again = load_classifier(path)
    assert type(again) is type(clfs[kind])
    assert again.kind == kind
    assert np.array_equal(again.predict_proba(Xt), clfs[kind].predict_proba(Xt))
    assert again.settings == clfs[kind].settings


def test_classifier_input_errors(fitted, tmp_path):
    clfs, Xt, yt = fitted
    with pytest.raises(ClassifierError, match=r"\(n, 17, 250\); got \(40, 17, 200\)"):
        clfs["eegnet"].predict_proba(Xt[:, :, :200])
    fresh = make_classifier("eegnet", 17, 250, 250.0)
    with pytest.raises(ClassifierError, match="not fitted"):
        fresh.predict_proba(Xt)
    with pytest.raises(ClassifierError, match="labels must be 0"):
        fresh.fit(Xt, yt + 1)
    with pytest.raises(ClassifierError, match="both classes"):
        fresh.fit(Xt[yt == 0], yt[yt == 0])
    with pytest.raises(ClassifierError, match="unknown classifier 'svm'"):
        make_classifier("svm", 17, 250, 250.0)
    save_atms(ATMS(), tmp_path / "enc.safetensors")
    with pytest.raises(CheckpointError, match="not an EEGS classifier file"):
        load_classifier(tmp_path / "enc.safetensors")


def test_inner_validation_keeps_the_best_pass_and_never_sees_other_data():
    """val_fraction holds out part of the training data and restores the best pass."""
    X, y = _labelled(60, amp=8.0)
    Xt, yt = _labelled(40, amp=8.0, seed=1)
    s = AtmsFcSettings(epochs=80, batch_size=16, val_fraction=0.2, patience=10)
    clf = AtmsFcClassifier(17, 250, 250.0, s, seed=0).fit(X, y)
    info = clf.train_info
    assert info["n_validation"] == 12  # 20 % of each class of the 60 training epochs
    assert 1 <= info["best_pass"] <= info["passes"] <= 80
    assert float((clf.predict(Xt) == yt).mean()) >= 0.6
    again = AtmsFcClassifier(17, 250, 250.0, s, seed=0).fit(X, y)  # seeded: reproducible
    assert np.array_equal(again.predict_proba(Xt), clf.predict_proba(Xt))
    off = AtmsFcClassifier(17, 250, 250.0, AtmsFcSettings(epochs=3), seed=0).fit(X, y)
    assert off.train_info == {"passes": 3, "best_pass": 3, "n_validation": 0}


def test_make_classifier_loads_the_protocol_encoder(tmp_path):
    from experiment_protocols import load_protocol

    torch.manual_seed(5)
    enc = ATMS()
    path = save_atms(enc, tmp_path / "trained.safetensors")
    dec = load_protocol().decoder
    dec.encoder_checkpoint = str(path)
    clf = make_classifier("atms_fc", 17, 250, 250.0, dec.model_dump())
    assert clf.encoder_source == str(path)
    assert not clf.random_encoder
    assert torch.equal(clf.encoder.proj_in.weight, enc.proj_in.weight)
    assert not any(p.requires_grad for p in clf.encoder.parameters())  # frozen
    assert clf.settings.hidden == (512, 256)  # the poster's 1024 -> 512 -> 256 -> 2
    widths = [m.out_features for m in clf.head.mlp if isinstance(m, torch.nn.Linear)]
    assert widths == [512, 256, 2]
    with pytest.raises(CheckpointError, match="17 channels"):
        make_classifier("atms_fc", 63, 250, 250.0, dec.model_dump())


# -- CLIP training -------------------------------------------------------------------------
def test_clip_loss_and_retrieval_metrics():
    torch.manual_seed(0)
    emb = torch.randn(16, 32)
    scale = torch.tensor(np.log(1 / 0.07))
    matched = clip_loss(emb, emb, scale)
    shuffled = clip_loss(emb, emb[torch.randperm(16)], scale)
    assert matched < 0.1 < shuffled
    perfect = retrieval_accuracy(emb.numpy(), emb.numpy(), 10)
    assert perfect["top1"] == 1.0
    assert perfect["top5"] == 1.0
    assert perfect["chance_top1"] == 0.1
    rng = np.random.default_rng(0)
    rand = retrieval_accuracy(rng.normal(size=(200, 32)), rng.normal(size=(200, 32)), 200)
    assert rand["top1"] < 0.05
    assert rand["k"] == 200


def test_clip_training_learns_and_resumes_exactly():
    train = synthetic_pairs(100, 2, snr=0.2, seed=1)
    test = synthetic_pairs(40, 2, snr=0.2, seed=2)
    assert isinstance(train, PairedEEG)
    assert train.eeg.shape == (200, 17, 250)

    def trainer() -> ClipTrainer:
        torch.manual_seed(0)
        return ClipTrainer(ATMS(), lr=1e-3, batch_size=32, seed=3)

    a = trainer()
    before = a.evaluate(test, [10])["10way"]["top1"]
    for _ in range(3):
        a.train_epoch(train)
    after = a.evaluate(test, [10])["10way"]["top1"]
    assert after >= 0.5, (before, after)  # chance 0.1
    assert after > before, (before, after)

    b = trainer()
    b.train_epoch(train)
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    c = trainer()
    buf.seek(0)
    c.load_state_dict(torch.load(buf, weights_only=True))
    c.train_epoch(train)
    c.train_epoch(train)
    for (k, v), w in zip(a.model.state_dict().items(), c.model.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
