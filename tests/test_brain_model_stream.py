"""`eegs brain-model` as a real process on loopback LSL: epoched by `eegs acquire`,
timed by its photodiode, and robust to markers that name bad images."""

from __future__ import annotations

import json
import time

import mne
import numpy as np
import pylsl
from helpers import events_named, wait_for_event, wait_until
from scipy.signal import sosfilt
from test_brain_model import make_images

from models.brain.response import ATM_CHANNELS, BrainModel
from workers.lsl_clock import make_marker_outlet
from workers.session_store import SessionStore

SNR = 4.0  # a clear response, so that single trials show it


def _start_brain_model(processes, name: str, markers: str, *extra: str):
    outlet = make_marker_outlet(markers)
    proc = processes.eegs(
        "brain-model", "--name", name, "--markers", markers, "--seed", "0",
        "--subject-seed", "0", "--snr", str(SNR), *extra,
    )  # fmt: skip
    if not outlet.wait_for_consumers(30):
        proc.terminate()
        raise AssertionError(f"brain model never read the markers: {proc.communicate(10)[1]}")
    return outlet, proc


def _push(outlet, payload: dict, t: float | None = None) -> float:
    t = pylsl.local_clock() if t is None else t
    outlet.push_sample([json.dumps(payload)], t)
    return t


def _stop(proc) -> str:
    proc.terminate()  # SIGTERM: a clean stop
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


def test_acquisition_epochs_show_the_response_and_bad_images_give_background(
    processes, tmp_path, stream_name, free_port
):
    images = make_images(4, seed=5)
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"img{i}.png")
        im.save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    markers = f"{stream_name}-markers"
    outlet, bm = _start_brain_model(
        processes, stream_name, markers, "--sfreq", "250", "--channels", "atm17",
        "--photodiode-lag-ms", "20", "--image-root", str(tmp_path),
    )  # fmt: skip
    session = tmp_path / "session"
    acq = processes.eegs(
        "acquire", "--session", str(session), "--eeg", stream_name, "--markers", markers,
        "--tmin", "-0.2", "--tmax", "0.8", "--endpoint", f"tcp://127.0.0.1:{free_port}",
        "--no-record",
    )  # fmt: skip
    wait_for_event(session, "acquisition_ready", timeout=60, proc=acq)
    time.sleep(1.0)  # let the filters settle
    names = ["img0.png", str(paths[1]), "missing.png", "img2.png", "broken.png", "img3.png",
             "img0.png", str(paths[1])]  # fmt: skip
    for k, image in enumerate(names):
        _push(outlet, {"event": "stimulus_onset", "trial": k, "block": "calibration",
                       "round": 0, "image": image})  # fmt: skip
        time.sleep(1.1)
    wait_until(lambda: len(events_named(session, "epoch")) == len(names), timeout=30)
    assert bm.poll() is None  # still streaming after the bad markers
    err = _stop(bm)
    assert "missing.png: cannot read" in err
    assert "background EEG only" in err
    assert "broken.png: not a readable image" in err

    stored = {e.trial_id: e for e in SessionStore(session).epochs()}
    assert sorted(stored) == list(range(len(names)))
    epochs = np.array([stored[k].data for k in range(len(names))])
    assert epochs.shape == (len(names), 17, 251)

    # What the epochs should hold: the same schedule (from the markers' LSL times)
    # rendered without noise or trial variability, with the 20 ms display lag, through
    # the acquisition's causal band-pass, epoched and baseline-corrected alike.
    # Responses last 1.5 s, so each epoch also holds the previous trial's tail.
    t_first = stored[0].meta["t_marker_lsl"]
    onsets = [
        1000 + round((stored[k].meta["t_marker_lsl"] - t_first) * 250) for k in range(len(names))
    ]
    sos = mne.filter.create_filter(
        None, 250.0, 0.5, 40.0, method="iir", phase="forward", verbose="error",
        iir_params={"order": 4, "ftype": "butter", "output": "sos"},
    )["sos"]  # fmt: skip

    def noise_free(shown: list) -> np.ndarray:
        model = BrainModel(0, sfreq=250.0, ch_names=ATM_CHANNELS, snr=1e6, display_lag_ms=20.0,
                           trial_amplitude_sd=0.0, trial_latency_sd_ms=0.0)  # fmt: skip
        sim, parts = model.stream(seed=0), []
        for onset, path in zip(onsets, shown, strict=True):
            parts.append(sim.render(onset - sim.next_sample))
            if path is not None:
                sim.onset(path, onset / 250.0)
        parts.append(sim.render(300))
        y = sosfilt(sos, np.concatenate(parts, axis=1), axis=1)
        ep = np.array([y[:, s - 50 : s + 201] for s in onsets])
        return ep - ep[:, :, :50].mean(axis=2, keepdims=True)

    def corr(x: np.ndarray, y: np.ndarray) -> float:
        """Correlation over 0-0.8 s, all channels."""
        return float(np.corrcoef(x[:, 50:].ravel(), y[:, 50:].ravel())[0, 1])

    shown = [paths[0], paths[1], None, paths[2], None, paths[3], paths[0], paths[1]]
    expected = noise_free(shown)
    good = [k for k, p in enumerate(shown) if p is not None]
    single = [corr(epochs[k], expected[k]) for k in good]
    average = corr(epochs[good].mean(0), expected[good].mean(0))
    assert min(single) > 0.6, single
    assert average > 0.9, average
    # the bad markers got background only: had the brain model answered them with a
    # response, what is left after the expected signal would correlate with it
    answered = noise_free([paths[0] if p is None else p for p in shown])
    for k in (2, 4):
        would_be = answered[k] - expected[k]
        assert corr(epochs[k] - expected[k], would_be) < 0.5
        assert corr(epochs[k], answered[k]) < corr(epochs[k], expected[k])


def test_photodiode_and_response_follow_the_display_onset(processes, tmp_path, stream_name):
    images = make_images(3, seed=6)
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"img{i}.png")
        im.save(paths[-1])
    fs, lag_ms = 1000.0, 30.0
    # no trial-to-trial latency jitter (10 ms by default): it would blur the timing
    protocol = tmp_path / "protocol.toml"
    protocol.write_text("[brain_model]\ntrial_latency_sd_ms = 0.0\ntrial_amplitude_sd = 0.0\n")
    markers = f"{stream_name}-markers"
    outlet, bm = _start_brain_model(
        processes, stream_name, markers, "--protocol", str(protocol), "--sfreq", str(fs),
        "--channels", "Oz,PO8,Pz", "--photodiode", "--photodiode-lag-ms", str(lag_ms),
        "--photodiode-duration-s", "2",
    )  # fmt: skip
    info = pylsl.resolve_byprop("name", stream_name, 1, 20)
    assert info
    assert info[0].channel_count() == 4
    assert info[0].nominal_srate() == fs
    inlet = pylsl.StreamInlet(info[0])  # same host: the stamps as sent
    chans = inlet.info(timeout=10).desc().child("channels").first_child()
    labels, types = [], []
    while not chans.empty():
        labels.append(chans.child_value("label"))
        types.append(chans.child_value("type"))
        chans = chans.next_sibling()
    assert labels == ["Oz", "PO8", "Pz", "Photodiode"]
    assert types[-1] == "MISC"
    inlet.open_stream(timeout=10)
    data, stamps = [], []

    def drain() -> None:
        d, t = inlet.pull_chunk(timeout=0.0, max_samples=100000)
        data.extend(d)
        stamps.extend(t)

    onsets, offsets = [], []
    lead_in = pylsl.local_clock() + 0.5
    while pylsl.local_clock() < lead_in:
        drain()
        time.sleep(0.01)
    for k in range(6):
        t_on = _push(outlet, {"event": "stimulus_onset", "trial": k, "image": str(paths[k % 3])})
        onsets.append(t_on)
        while pylsl.local_clock() < t_on + 0.4:
            drain()
            time.sleep(0.01)
        offsets.append(_push(outlet, {"event": "stimulus_offset", "trial": k}, t_on + 0.4))
        while pylsl.local_clock() < t_on + 1.2:
            drain()
            time.sleep(0.01)
    time.sleep(0.3)
    drain()
    _stop(bm)
    x, ts = np.asarray(data), np.asarray(stamps)
    d = np.diff(ts)
    assert np.allclose(d, 1 / fs, atol=1e-6), (d.min(), d.max(), np.sum(np.abs(d - 1 / fs) > 1e-6))
    pd = x[:, -1]
    rise = ts[np.flatnonzero(np.diff(pd) > 0.5) + 1]
    fall = ts[np.flatnonzero(np.diff(pd) < -0.5) + 1]
    assert len(rise) == len(fall) == 6
    # stamps are on the sample grid: within one sample of marker + lag
    np.testing.assert_allclose((rise - onsets) * 1e3, lag_ms, atol=1e3 / fs + 0.1)
    np.testing.assert_allclose((fall - offsets) * 1e3, lag_ms, atol=1e3 / fs + 0.1)

    model = BrainModel(0, sfreq=fs, ch_names=["Oz", "PO8", "Pz"], snr=SNR,
                       trial_amplitude_sd=0.0, trial_latency_sd_ms=0.0)  # fmt: skip
    expected = np.mean([model.evoked(paths[k % 3]) for k in range(6)], axis=0)[:, :800]
    starts = [int(np.searchsorted(ts, t)) for t in onsets]
    avg = np.mean([x[s - 100 : s + 900, :3].T for s in starts], axis=0)
    avg -= avg[:, :100].mean(1, keepdims=True)

    def corr(shift: int) -> float:
        seg = avg[:, 100 + shift : 900 + shift]
        return float(np.corrcoef(seg.ravel(), expected.ravel())[0, 1])

    shifts = np.arange(-20, 80)
    scores = [corr(int(s)) for s in shifts]
    best = int(shifts[int(np.argmax(scores))])
    assert abs(best - lag_ms) <= 1, best  # the sample grid's rounding
    assert max(scores) > 0.8, max(scores)
