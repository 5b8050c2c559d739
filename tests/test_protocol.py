"""Protocol files: validated on load, bad ones rejected with file, field and expectation."""

from __future__ import annotations

import pytest
from conftest import run_eegs

from experiment_protocols import DEFAULT_PROTOCOL, ProtocolError, load_protocol


def test_default_protocol_loads_with_hash():
    p = load_protocol()
    assert p.source == str(DEFAULT_PROTOCOL)
    assert len(p.sha256) == 64
    assert p.epochs.tmin < 0 < p.epochs.tmax
    assert p.preprocessing.resample_hz == 250.0


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("[epochs]\ntmni = -0.2\n", "epochs.tmni", "unknown key"),
        ("[epochs]\ntmin = 'soon'\n", "epochs.tmin", "valid number"),
        ("[epochs]\ntmin = 0.5\ntmax = 0.1\n", "epochs", "tmax (0.1) must be greater"),
        ("[epochs]\nbaseline = [-0.5, 0.0]\n", "epochs", "baseline"),
        ("[preprocessing]\nl_freq = 40.0\nh_freq = 1.0\n", "preprocessing", "below h_freq"),
        ("[quality]\nreject_uv = -1\n", "quality.reject_uv", "greater than 0"),
        ("[nonsense]\nx = 1\n", "nonsense", "unknown key"),
        ("[streams]\nbuffer_s = 1.0\n", "(top level)", "cannot hold an epoch"),
        ("[epochs\n", "(file)", "not valid TOML"),
    ],
)
def test_bad_protocol_is_rejected_naming_the_field(tmp_path, text, field, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ProtocolError) as err:
        load_protocol(path)
    assert err.value.field == field
    assert expected in err.value.message
    assert str(path) in str(err.value)


def test_overrides_are_validated():
    p = load_protocol().with_overrides(
        {"epochs.tmin": -0.1, "epochs.baseline": (-0.1, 0.0), "streams.eeg": "amp"}
    )
    assert p.epochs.tmin == -0.1
    assert p.streams.eeg == "amp"
    with pytest.raises(ProtocolError, match="epochs"):
        load_protocol().with_overrides({"epochs.tmax": -5.0})


def test_cli_exits_2_on_bad_protocol(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text("[streams]\neeeg = 'x'\n")
    res = run_eegs("acquire", "--protocol", str(path), "--session", str(tmp_path / "s"))
    assert res.returncode == 2
    assert str(path) in res.stderr
    assert "streams.eeeg" in res.stderr
    assert "unknown key" in res.stderr


def test_cli_exits_2_on_missing_protocol(tmp_path):
    res = run_eegs(
        "acquire", "--protocol", str(tmp_path / "nope.toml"), "--session", str(tmp_path / "s")
    )
    assert res.returncode == 2
    assert "nope.toml" in res.stderr
    assert "cannot read" in res.stderr
