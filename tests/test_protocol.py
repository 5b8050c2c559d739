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


@pytest.mark.parametrize("mode", ["personal", "lpp", "asymmetry", "affective"])
def test_a_written_protocol_reads_back_with_every_field_of_its_reward(tmp_path, mode):
    """protocol.toml of a session is dumped from the model; `eegs resume` reads it back."""
    from app.pilot import write_protocol
    from experiment_protocols.rewards import switch_mode

    p = load_protocol()
    reward = switch_mode(p.generation.reward, mode)
    p = p.with_overrides({"generation.reward": reward.model_dump()})
    back = write_protocol(p, tmp_path / "protocol.toml")
    assert type(back.generation.reward) is type(reward)
    assert back.generation.reward == reward
    assert back.model_dump() == p.model_dump()
    text = (tmp_path / "protocol.toml").read_text()
    assert f'mode = "{mode}"' in text
    for key in reward.model_dump():
        assert key in text, key


def test_an_unknown_reward_mode_names_the_registered_ones(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[generation.reward]\nmode = "lpq"\n')
    with pytest.raises(ProtocolError) as err:
        load_protocol(path)
    assert err.value.field == "generation.reward"
    assert "unknown reward mode 'lpq'" in err.value.message
    assert "lpp" in err.value.message
    assert "personal" in err.value.message


def test_a_key_of_another_mode_is_refused_naming_it(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[generation.reward]\nmode = "lpp"\nfolds = 4\n')
    with pytest.raises(ProtocolError) as err:
        load_protocol(path)
    assert err.value.field == "generation.reward.folds"
    assert "unknown key" in err.value.message


def test_the_older_flat_reward_layout_is_read_with_a_warning(tmp_path, caplog):
    """Protocol files (and sessions' protocol.toml) written before the modes had their keys."""
    path = tmp_path / "old.toml"
    path.write_text(
        '[generation.reward]\nmode = "personal"\npersonal_folds = 4\npersonal_min_trials = 10\n'
        'decoder = ""\ntarget_class = "joy"\nlpp_window_s = [0.3, 0.9]\n'
        'asymmetry_pairs = [["F7", "F8"]]\nasymmetry_alpha_scale = 0.7\n'
    )
    with caplog.at_level("WARNING", logger="eegs.protocol"):
        r = load_protocol(path).generation.reward
    assert (r.mode, r.folds, r.min_trials, r.target_class) == ("personal", 4, 10, "joy")
    assert r.fallback.pairs == [("F7", "F8")]
    assert r.fallback.alpha_scale == 0.7
    (warning,) = [m for m in caplog.messages if "older flat layout" in m]
    assert "personal_folds -> folds" in warning
    assert "asymmetry_pairs -> fallback.pairs" in warning
    assert "lpp_window_s" in warning
    assert "decoder" in warning
    path.write_text('[generation.reward]\nmode = "lpp"\nlpp_scale_uv = 3.0\n')
    assert load_protocol(path).generation.reward.scale_uv == 3.0
    path.write_text("[generation.reward]\nlpp_window_s = [0.5, 0.4]\n")  # no mode: lpp
    with pytest.raises(ProtocolError) as err:
        load_protocol(path)
    assert err.value.field == "generation.reward"
    assert "window_s [0.5, 0.4] needs start < end" in err.value.message
