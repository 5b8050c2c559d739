"""`eegs doctor` against a real LSL stream."""

from __future__ import annotations

import json

from conftest import run_eegs
from lsl_source import NoiseSource


def test_doctor_passes_then_flags_missing_channels(tmp_path, stream_name):
    src = NoiseSource(stream_name, ["Fz", "Cz", "Pz"], sfreq=500.0).start()
    try:
        res = run_eegs("doctor", "--eeg", stream_name, "--session", str(tmp_path), "--json")
        findings = {f["check"]: f for f in json.loads(res.stdout)}
        assert res.returncode == 0, res.stdout
        assert findings["eeg stream"]["status"] == "ok"
        assert "3 channels, 500 Hz" in findings["eeg stream"]["detail"]
        assert findings["disk"]["status"] in ("ok", "warn")
        # the personal reward (default) reads every channel; its asymmetry fallback has
        # no frontal pair here: a warning, not a failure
        assert findings["reward channels"]["status"] == "warn"
        assert "fallback" in findings["reward channels"]["detail"]
        assert "decoder channels" not in findings  # decoder.channels = []: every channel

        lpp = tmp_path / "lpp.toml"
        lpp.write_text('[generation.reward]\nmode = "lpp"\n')
        res = run_eegs("doctor", "--protocol", str(lpp), "--eeg", stream_name, "--json")
        findings = {f["check"]: f for f in json.loads(res.stdout)}
        assert findings["reward channels"]["status"] == "ok"  # the LPP reward reads Pz
        assert "Pz" in findings["reward channels"]["detail"]

        proto = tmp_path / "p.toml"
        proto.write_text(
            '[streams]\nsfreq = 250.0\n[preprocessing]\nmontage = ["Cz", "PO8"]\n'
            '[generation.reward]\nmode = "asymmetry"\n[decoder]\nchannels = ["Cz", "Oz"]\n'
        )
        res = run_eegs("doctor", "--protocol", str(proto), "--eeg", stream_name, "--json")
        findings = {f["check"]: f for f in json.loads(res.stdout)}
        assert res.returncode == 1
        assert findings["channels"]["status"] == "fail"
        assert "PO8" in findings["channels"]["detail"]
        assert findings["sampling rate"]["status"] == "fail"
        assert findings["reward channels"]["status"] == "fail"  # no F3/F4-like pair
        assert "frontal pairs" in findings["reward channels"]["detail"]
        assert findings["decoder channels"]["status"] == "fail"  # Oz: not in the montage
        assert "['Oz']" in findings["decoder channels"]["detail"]
    finally:
        src.stop()


def test_doctor_fails_without_stream(tmp_path, stream_name):
    res = run_eegs("doctor", "--eeg", stream_name, "--timeout", "0.5")
    assert res.returncode == 1
    assert "FAIL" in res.stdout
    assert stream_name in res.stdout
