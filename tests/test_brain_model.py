"""The brain model offline: features, hidden affect, responses, background, plug-in, CLI."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from conftest import run_eegs
from PIL import Image, ImageDraw, ImageFilter
from scipy.signal import welch
from scipy.stats import spearmanr

from experiment_protocols import ProtocolError, load_protocol
from models.brain.features import FEATURES, ImageError, image_features
from models.brain.response import (
    ATM_CHANNELS,
    PHOTODIODE,
    STANDARD_64,
    BrainModel,
)


def make_images(n: int, seed: int = 0, size: int = 128) -> list[Image.Image]:
    """Procedural images that vary in colour, brightness, contrast, texture and shape."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        ang = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5) + 0.5)[..., None]
        base = c0 * (1 - ramp) + c1 * ramp
        kind = rng.integers(3)
        if kind == 0:  # grating
            f, th = rng.uniform(2, 20), rng.uniform(0, np.pi)
            grating = np.sin(2 * np.pi * f * (np.cos(th) * xx + np.sin(th) * yy))
            base = base * (1 + rng.uniform(0, 0.6) * grating[..., None])
        elif kind == 1:  # coarse or fine noise texture
            noise = rng.standard_normal((size // 4, size // 4))
            noise = (
                np.kron(noise, np.ones((4, 4)))
                if rng.random() < 0.5
                else rng.standard_normal((size, size))
            )
            base = base + rng.uniform(0, 0.3) * noise[..., None]
        img = Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(0, 8)):
            col = tuple(int(v) for v in rng.integers(0, 256, 3))
            x0, y0 = rng.uniform(0, size, 2)
            w, h = rng.uniform(8, size / 2, 2)
            shape = rng.integers(3)
            if shape == 0:
                draw.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
            elif shape == 1:
                draw.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
            else:
                draw.polygon([tuple(rng.uniform(0, size, 2)) for _ in range(3)], fill=col)
        if rng.random() < 0.3:  # mirror-symmetric
            a = np.asarray(img)
            a = np.concatenate([a[:, : size // 2], a[:, : size // 2][:, ::-1]], 1)
            img = Image.fromarray(a)
        if rng.random() < 0.3:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(1, 4)))
        out.append(img)
    return out


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return make_images(50, seed=1)


@pytest.fixture(scope="module")
def model() -> BrainModel:
    return BrainModel(0, sfreq=250.0)


# -- channels and features ---------------------------------------------------------------------
def test_channel_sets():
    assert len(ATM_CHANNELS) == 17
    assert len(set(ATM_CHANNELS)) == 17
    assert len(STANDARD_64) == 64
    assert len(set(STANDARD_64)) == 64
    assert set(ATM_CHANNELS) <= set(STANDARD_64)
    with pytest.raises(ValueError, match="XX1"):
        BrainModel(0, ch_names=["Oz", "XX1"])
    with pytest.raises(ValueError, match="photodiode"):
        BrainModel(0, ch_names=["Oz", PHOTODIODE])


def test_features_name_what_they_measure():
    grey = np.full((64, 64, 3), 128, np.uint8)
    red = grey.copy()
    red[..., 0], red[..., 1], red[..., 2] = 220, 30, 30
    stripes = grey.copy()
    stripes[:, ::4] = 255
    lower = grey.copy()
    lower[40:, ::3] = 0  # texture in the lower half only
    arrays = {"grey": grey, "red": red, "stripes": stripes, "lower": lower}
    f = {k: dict(zip(FEATURES, image_features(a), strict=True)) for k, a in arrays.items()}
    assert f["grey"]["contrast"] == pytest.approx(0.0, abs=1e-6)
    assert f["red"]["saturation"] > 0.8 > f["grey"]["saturation"] + 0.5
    assert f["red"]["red_green"] > 0.5
    assert f["red"]["colourfulness"] > f["grey"]["colourfulness"]
    assert f["stripes"]["edge_density"] > 0.3 > f["grey"]["edge_density"]
    assert f["stripes"]["high_freq"] > 0.5
    assert f["stripes"]["curvature"] < 0.3  # one orientation: angular, not curved
    assert f["lower"]["lower_upper"] > 0.9
    assert abs(f["stripes"]["left_right"]) < 0.2
    bright = Image.fromarray(np.full((64, 64, 3), 230, np.uint8))
    assert image_features(bright)[0] > f["grey"]["brightness"]


def test_unreadable_images_raise_image_error(tmp_path, model):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="not a readable image"):
        model.affect(bad)
    with pytest.raises(ImageError, match="cannot read"):
        model.evoked(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="HxWx3"):
        model.affect(np.zeros((4, 4), np.uint8))


# -- hidden affect -----------------------------------------------------------------------------
def test_affect_is_deterministic_bounded_and_accepts_paths(tmp_path, images, model):
    path = tmp_path / "a.png"
    images[0].save(path)
    v, a = model.affect(images[0])
    assert (v, a) == model.affect(path) == model.affect(np.asarray(images[0]))
    assert (v, a) == BrainModel(0).affect(images[0])  # depends on the seed only
    values = np.array([model.affect(im) for im in images])
    assert np.all(np.abs(values[:, 0]) < 1)
    assert np.all((values[:, 1] > 0) & (values[:, 1] < 1))
    assert values[:, 0].std() > 0.3
    assert values[:, 1].std() > 0.1


def test_subjects_rank_images_differently(images):
    """Spearman rho of valence between consecutive seeds, over the same 50 images."""

    def valence(seed):
        m = BrainModel(seed)
        return [m.affect(im)[0] for im in images]

    values = {s: valence(s) for s in range(11)}
    rhos = np.array([spearmanr(values[s], values[s + 1])[0] for s in range(10)])
    assert np.median(rhos) < 0.3
    assert (rhos < 0.5).sum() >= 8


def test_affect_follows_interpretable_features(images):
    """Valence is a function of the documented features: a feature edit moves it."""
    m = BrainModel(4)
    w = m._subject.valence_w  # the hidden weights, read here only to pick a feature
    i = int(np.argmax(np.abs(w[:2])))  # brightness or contrast
    img = np.asarray(images[3]).astype(float)
    edited = img * 1.3 if i == 0 else (img - img.mean()) * 1.5 + img.mean()
    edited = np.clip(edited, 0, 255).astype(np.uint8)
    assert image_features(edited)[i] > image_features(images[3])[i]
    assert m.affect(edited)[0] != m.affect(images[3])[0]


# -- stimulus-locked responses -----------------------------------------------------------------
def test_evoked_depends_on_content_and_has_erp_shape(images, model):
    ev = np.array([model.evoked(im) for im in images[:20]])
    assert ev.shape == (20, 64, int(1.5 * 250))
    assert np.abs(ev[:, :, 0]).max() < 0.01  # nothing before display onset
    po8, pz = STANDARD_64.index("PO8"), STANDARD_64.index("Pz")
    grand = ev.mean(0)
    n1 = grand[po8, int(0.14 * 250) : int(0.2 * 250)].min()
    assert n1 < -2.0  # a posterior N1 of some µV
    assert grand[pz, int(0.45 * 250) : int(0.9 * 250)].mean() > 1.0  # a parietal LPP
    # content changes the response: images differ by more than a tenth of its size
    spread = ev.std(0)[:, :250].mean()
    assert spread > 0.1 * np.abs(grand[:, :250]).mean()
    rms = np.sqrt((ev[:, :, :250] ** 2).mean())
    assert 0.7 < rms / model.response_uv < 1.5  # response_uv is the average image's RMS


def test_response_scales_with_response_uv(images):
    a = BrainModel(0, response_uv=1.0).evoked(images[0])
    b = BrainModel(0, response_uv=3.0).evoked(images[0])
    np.testing.assert_allclose(b, 3 * a, rtol=1e-9, atol=1e-12)


def test_lpp_grows_with_arousal():
    m = BrainModel(5, sfreq=250.0, realism="clean")  # the affect in full
    imgs = make_images(80, seed=7)
    arousal = np.array([m.affect(im)[1] for im in imgs])
    pz = STANDARD_64.index("Pz")
    epn = [m.evoked(im)[STANDARD_64.index("P8"), int(0.22 * 250) : int(0.30 * 250)].mean()
           for im in imgs]  # fmt: skip
    assert np.corrcoef(arousal, epn)[0, 1] < -0.3  # EPN more negative for arousing images
    lpp = [m.evoked(im)[pz, int(0.4 * 250) : int(0.9 * 250)].mean() for im in imgs]
    v = np.array([m.affect(im)[0] for im in imgs])
    fit = np.linalg.lstsq(np.column_stack([arousal, v, np.ones_like(v)]), lpp, rcond=None)[0]
    assert fit[0] > 0  # LPP rises with arousal for this subject


# -- background --------------------------------------------------------------------------------
def test_background_rms_spectrum_and_topography(model):
    x = model.stream(seed=3).render(250 * 60)
    assert x.shape == (64, 250 * 60)
    rms = np.sqrt((x**2).mean())
    assert rms == pytest.approx(model.background_rms_uv, rel=0.15)
    assert model.background_rms_uv == pytest.approx(model.response_uv / model.snr)
    f, p = welch(x, 250, nperseg=1000)
    oz, fz = STANDARD_64.index("Oz"), STANDARD_64.index("Fz")
    iaf = model._subject.alpha_hz

    def band(ch, lo, hi):
        return p[ch, (f >= lo) & (f < hi)].mean()

    assert band(oz, iaf - 1, iaf + 1) > 5 * band(oz, 14, 18)  # posterior alpha peak
    assert band(oz, iaf - 1, iaf + 1) / band(oz, 3, 5) > band(fz, iaf - 1, iaf + 1) / band(fz, 3, 5)
    keep = (f > 2) & (f < 40) & ((f < iaf - 3) | (f > iaf + 3))
    slope = np.polyfit(np.log10(f[keep]), np.log10(p[:, keep].mean(0)), 1)[0]
    assert -2.0 < slope < -1.0  # 1/f^1.5
    c = np.corrcoef(x)
    assert (
        c[STANDARD_64.index("O1"), oz]
        > 0.5
        > abs(c[STANDARD_64.index("Fp1"), STANDARD_64.index("O2")])
    )


def test_background_does_not_depend_on_chunk_size(model):
    whole = model.stream(seed=11).render(1000)
    sim = model.stream(seed=11)
    parts = np.concatenate([sim.render(n) for n in (1, 7, 250, 13, 729)], axis=1)
    np.testing.assert_allclose(whole, parts, rtol=0, atol=1e-9)  # BLAS rounding only
    assert not np.array_equal(whole, model.stream(seed=12).render(1000))


def test_line_noise_and_blinks():
    m = BrainModel(0, sfreq=250.0, line_noise_uv=5.0, blinks_per_min=30, blink_uv=120.0)
    x = m.stream(seed=0).render(250 * 60)
    f, p = welch(x, 250, nperseg=500)
    assert p[:, np.argmin(abs(f - 50))].mean() > 20 * p[:, np.argmin(abs(f - 45))].mean()
    fp1, oz = STANDARD_64.index("Fp1"), STANDARD_64.index("Oz")
    assert np.percentile(np.abs(x[fp1]), 99.5) > 80  # blinks at the front...
    assert np.percentile(np.abs(x[oz]), 99.5) < 60  # ...fade towards the back
    clean = BrainModel(0, sfreq=250.0).stream(seed=0).render(250 * 60)
    assert np.percentile(np.abs(clean[fp1]), 99.5) < 60


# -- the simulation: epochs, photodiode, lost samples ------------------------------------------
def test_simulate_epochs_is_background_plus_response(images, model):
    ep = model.simulate_epochs(images[:5], tmin=-0.2, tmax=1.0, seed=4)
    assert ep.shape == (5, 64, 301)
    assert model.simulate_epochs([], seed=4).shape == (0, 64, 301)
    # without alpha (whose induced changes differ between images) and trial variability,
    # the same seed gives the same background: epochs differ by the evoked responses only
    quiet = BrainModel(0, sfreq=250.0, alpha_share=0.0, trial_amplitude_sd=0.0,
                       trial_latency_sd_ms=0.0)  # fmt: skip
    a = quiet.simulate_epochs(images[:3], seed=4)
    b = quiet.simulate_epochs([images[5]] * 3, seed=4)
    for i in range(3):
        want = quiet.evoked(images[i])[:, :251] - quiet.evoked(images[5])[:, :251]
        np.testing.assert_allclose(a[i, :, 50:] - b[i, :, 50:], want, atol=1e-9)
    assert np.abs(a[0] - b[0]).max() > 0.5


def test_display_lag_and_photodiode(images):
    fs = 1000.0
    m = BrainModel(0, sfreq=fs, ch_names=ATM_CHANNELS, display_lag_ms=25.0)
    sim = m.stream(seed=0, photodiode=True, photodiode_duration_s=0.5)
    assert sim.ch_names[-1] == PHOTODIODE
    assert sim.ch_types[-1] == "MISC"
    sim.render(100)
    stim = sim.onset(images[0], 0.2)  # marker at sample 200
    assert stim.first == 225
    assert stim.lost_samples == 0
    sim.offset(0.4)
    x = sim.render(700)
    pd = x[-1]
    assert np.flatnonzero(pd)[0] + 100 == 225  # lit at marker + lag
    assert np.flatnonzero(pd)[-1] + 100 == 424  # dark at offset marker + lag
    late = sim.onset(images[1], 0.75)  # onset already rendered (stream at 0.8 s)
    assert late.first == 800
    assert late.lost_samples == 25
    x = sim.render(1000)
    assert x[-1, 0] == 1.0
    assert np.flatnonzero(x[-1] == 0)[0] == 775 + 500 - 800
    jittery = BrainModel(0, sfreq=fs, ch_names=["Oz"], display_lag_ms=20.0, display_jitter_ms=4.0)
    sim = jittery.stream(seed=1, photodiode=True, photodiode_duration_s=0.05)
    starts = []
    for k in range(60):
        s = sim.onset(None, 0.01 + k * 0.1)
        assert s is None  # no image: the photodiode only
        x = sim.render(100)
        starts.append(
            np.flatnonzero(np.diff(x[-1]) > 0)[0] + 1 if np.any(np.diff(x[-1]) > 0) else 0
        )
    lags = np.array(starts) - 10  # ms after each marker
    assert 17 < lags.mean() < 23
    assert 2 < lags.std() < 6


def test_unreadable_image_still_lights_the_photodiode(tmp_path, model):
    sim = model.stream(seed=0, photodiode=True)
    with pytest.raises(ImageError):
        sim.onset(tmp_path / "missing.png", 0.1)
    assert not sim.stimuli
    assert sim.render(100)[-1].max() == 1.0


# -- learned model plug-in ---------------------------------------------------------------------
def test_learned_model_is_trained_saved_loaded_and_streamed(tmp_path, images, request):
    import torch

    from models.brain.learned import ImageToEEG, LearnedResponse, image_tensor, save_learned_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a thread pool only costs time
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    torch.manual_seed(0)
    teacher = BrainModel(0, sfreq=100.0, ch_names=ATM_CHANNELS)
    x = torch.cat([image_tensor(im, 32) for im in images[:16]])
    y = torch.tensor(
        np.array([teacher.evoked(im)[:, :100] for im in images[:16]]), dtype=torch.float32
    )
    net = ImageToEEG(17, 100, hidden=16)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    path = save_learned_model(
        net, tmp_path / "net.safetensors", ch_names=ATM_CHANNELS, sfreq=100.0,
        image_size=32, kwargs={"n_channels": 17, "n_times": 100, "hidden": 16},
    )  # fmt: skip
    learned = LearnedResponse.load(path)
    m = BrainModel(0, sfreq=200.0, ch_names=["Oz", "Pz"], learned=learned)
    ev = m.evoked(images[2])
    with torch.no_grad():
        direct = net(image_tensor(images[2], 32))[0].numpy()
    assert ev.shape == (2, 200)  # resampled 100 -> 200 Hz
    oz = ATM_CHANNELS.index("Oz")
    np.testing.assert_allclose(ev[0, ::2], direct[oz], atol=0.05 * np.abs(direct[oz]).max() + 1e-3)
    ep = m.simulate_epochs([images[2]] * 2, tmin=0.0, tmax=0.5, seed=0)
    assert ep.shape == (2, 2, 101)
    with pytest.raises(ValueError, match="not"):
        BrainModel(0, ch_names=["Fz"], learned=learned)  # Fz is not predicted


def test_learned_model_refuses_pickles_and_foreign_classes(tmp_path):
    from safetensors.torch import save_file

    from models.brain.learned import LearnedModelError, LearnedResponse

    pkl = tmp_path / "model.safetensors"
    pkl.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(LearnedModelError, match="not a safetensors"):
        LearnedResponse.load(pkl)
    import torch

    meta = {"eegs.ch_names": '["Oz"]', "eegs.sfreq": "100", "eegs.image_size": "8",
            "eegs.class": "os:system", "eegs.kwargs": '{"command": "echo pwned"}'}  # fmt: skip
    evil = tmp_path / "evil.safetensors"
    save_file({"w": torch.zeros(1)}, str(evil), metadata=meta)
    with pytest.raises(LearnedModelError, match="outside this project"):
        LearnedResponse.load(evil)
    with pytest.raises(LearnedModelError, match="not a torch.nn.Module"):
        LearnedResponse.load(evil, class_path="os:system")


# -- protocol and command line -----------------------------------------------------------------
def test_protocol_section(tmp_path):
    bm = load_protocol().brain_model
    assert bm.snr == 0.15
    assert bm.channels == []
    assert bm.photodiode is False
    bad = tmp_path / "bad.toml"
    bad.write_text("[brain_model]\nsnr = -1\n")
    with pytest.raises(ProtocolError, match="brain_model.snr"):
        load_protocol(bad)
    bad.write_text("[brain_model]\nsfreq = 250.0\nchunk_s = 0.001\n")
    with pytest.raises(ProtocolError, match="shorter than one sample"):
        load_protocol(bad)
    bad.write_text("[brain_model]\nsnrr = 1\n")
    with pytest.raises(ProtocolError, match="unknown key"):
        load_protocol(bad)


def test_oracle_command(tmp_path, images):
    paths = []
    for i, im in enumerate(images[:3]):
        paths.append(tmp_path / f"im{i}.png")
        im.save(paths[-1])
    res = run_eegs("brain-model", "oracle", *map(str, paths), "--json", "--subject-seed", "7")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    m = BrainModel(7)
    assert [r["image"] for r in rows] == [str(p) for p in paths]
    for r, p in zip(rows, paths, strict=True):
        assert (r["valence"], r["arousal"]) == pytest.approx(m.affect(p))
    text = run_eegs("brain-model", "oracle", str(paths[0]), "--subject-seed", "7")
    assert text.returncode == 0
    assert "valence" in text.stdout
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    res = run_eegs("brain-model", "oracle", str(bad))
    assert res.returncode == 2
    assert "bad.png" in res.stderr


def test_bad_settings_exit_2():
    res = run_eegs("brain-model", "--channels", "Oz,Nope", "--duration", "1")
    assert res.returncode == 2
    assert "Nope" in res.stderr
    res = run_eegs("brain-model", "--learned-model", "/nonexistent.safetensors", "--duration", "1")
    assert res.returncode == 2
    assert "no such file" in res.stderr
