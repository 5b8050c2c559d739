"""The brain model's realism: how much of the hidden affect one trial of its EEG carries.

A realism level (models/brain/realism.py) scales the affective modulations of every
family alike, after the family's carriers; the hidden affect, the visual ERPs and the
background stay as they are. These tests check that it scales exactly that part, that
the protocol, the commands and the session carry it, and that the lab level's single
trials carry much less of the valence than the uncalibrated model's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_brain_families import faa_index, lpp_valence_coef
from test_brain_model import make_images
from threadpoolctl import threadpool_limits

from app.cli import build_parser
from app.commands import brain_model as brain_model_command
from experiment_protocols import PROTOCOL_DIR, ProtocolError, load_protocol
from experiment_protocols.brain_model import REALISM_KEYS, REALISM_LEVELS
from models.brain.realism import PRESETS, Realism, realism
from models.brain.response import BrainModel
from workers.brain_model import build_model

pytestmark = pytest.mark.timeout(120)

FS = 250.0


@pytest.fixture(scope="module")
def images() -> list:
    return make_images(60, seed=5)


def test_presets_are_the_protocol_choices_in_order_of_signal():
    assert tuple(PRESETS) == tuple(REALISM_LEVELS) == ("clean", "strong", "lab", "faint")
    assert PRESETS["clean"] == Realism()  # the model as it was before its calibration
    gains = [(p.affect_gain, p.faa_gain) for p in PRESETS.values()]
    for more, less in zip(gains, gains[1:], strict=False):  # from most signal to least
        assert more[0] > less[0]
        assert more[1] > less[1]
    assert realism("lab") is PRESETS["lab"]
    with pytest.raises(ValueError, match="unknown brain-model realism 'bogus'.*clean"):
        realism("bogus")
    with pytest.raises(ValueError, match="affect_gain must be within"):
        Realism(affect_gain=-0.1)
    assert BrainModel(0).realism == PRESETS["lab"]  # the default, as the protocol's


@pytest.mark.parametrize("family", ["standard", "asymmetry", "lpp", "mixed", "weak"])
def test_a_level_acts_on_the_affective_part_only_after_the_family(family):
    clean = BrainModel(3, sfreq=FS, family=family, realism="clean")
    m = BrainModel(3, sfreq=FS, family=family, realism=Realism(affect_gain=0.3, faa_gain=0.2))
    a, b = clean._subject, m._subject
    assert b.faa == pytest.approx(a.faa * 0.2)
    assert (a.expression, b.expression) == (1.0, 0.3)
    # everything else about the person is as it was: hidden affect, visual gains, layout
    for f in dataclasses.fields(a):
        if f.name not in ("faa", "expression"):
            x, y = getattr(a, f.name), getattr(b, f.name)
            assert np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y, f.name
    assert m._scale == clean._scale  # visual ERPs in the same µV
    assert m.background_rms_uv == clean.background_rms_uv
    # the ERPs express the affect drawn towards the subject's average image's
    centre = 1 / (1 + np.exp(-a.arousal_bias))
    assert b.expressed(0.8, 0.9) == pytest.approx((0.24, centre + 0.3 * (0.9 - centre)))
    assert a.expressed(0.8, 0.9) == (0.8, 0.9)


def test_the_response_is_linear_in_the_affect_gain(images):
    """Half the gain is half-way: the gain scales exactly the affective part of the ERP."""
    full, none, half = (BrainModel(1, sfreq=FS, family="lpp", realism=Realism(affect_gain=g))
                        for g in (1.0, 0.0, 0.5))  # fmt: skip
    for im in images[:5]:
        np.testing.assert_allclose(
            half.evoked(im), (full.evoked(im) + none.evoked(im)) / 2, atol=1e-9
        )
    coef = [lpp_valence_coef(m, images) for m in (full, half, none)]
    assert abs(coef[0]) > 3.0  # µV per unit valence in the lpp family
    assert coef[1] == pytest.approx(coef[0] / 2, abs=0.3)
    assert abs(coef[2]) < 0.5  # what is left: visual components that share features
    # the ERPs express the affect of the subject's average image, not none: a grand
    # average LPP at Pz remains (these images' own mean affect is not the average's)
    pz = full.ch_names.index("Pz")
    late = slice(int(0.45 * FS), int(0.9 * FS))
    grand = [np.mean([m.evoked(im)[pz, late].mean() for im in images]) for m in (full, none)]
    assert grand[1] > 0.5 * grand[0]
    assert grand[1] > 1.0  # µV


def test_lab_single_trials_carry_far_less_valence_than_clean(images):
    """The asymmetry index of single trials, asymmetry family: clean reads valence, lab hardly."""
    r = {}
    for level in ("clean", "lab"):
        for seed in (0, 1, 2):
            m = BrainModel(seed, sfreq=FS, family="asymmetry", realism=level)
            valence = np.array([m.affect(im)[0] for im in images])
            with threadpool_limits(1):
                epochs = m.simulate_epochs(images, seed=0)
            r[level, seed] = np.corrcoef(faa_index(epochs, m.ch_names), valence)[0, 1]
    print({k: round(v, 2) for k, v in r.items()})
    clean = np.mean([r["clean", s] for s in (0, 1, 2)])
    lab = np.mean([r["lab", s] for s in (0, 1, 2)])
    assert clean > 0.4
    assert lab < clean - 0.25
    # the same background and visual responses: only the affective part differs
    same = Realism(affect_gain=1.0, faa_gain=1.0)
    a = BrainModel(0, sfreq=FS, realism="clean").simulate_epochs(images[:3], seed=1)
    b = BrainModel(0, sfreq=FS, realism=same).simulate_epochs(images[:3], seed=1)
    np.testing.assert_array_equal(a, b)


# -- protocol and command line ---------------------------------------------------------------
def test_protocol_keys(tmp_path):
    for name in ("default.toml", "pilot.toml"):
        assert load_protocol(PROTOCOL_DIR / name).brain_model.realism == "lab"
    bad = tmp_path / "bad.toml"
    bad.write_text('[brain_model]\nrealism = "bogus"\n')
    with pytest.raises(ProtocolError, match=r"brain_model\.realism.*clean"):
        load_protocol(bad)
    own = tmp_path / "own.toml"
    own.write_text('[brain_model]\nrealism = "clean"\naffect_gain = 0.5\n')
    settings = load_protocol(own).brain_model
    assert build_model(settings).realism == Realism(affect_gain=0.5, faa_gain=1.0)
    at = settings.at_realism("faint")  # a level named on the command line: its own numbers
    assert at["realism"] == "faint"
    assert all(at[k] is None for k in REALISM_KEYS)
    parser = build_parser()

    def level(*argv: str) -> Realism:
        args = parser.parse_args(["brain-model", *argv])
        return build_model(brain_model_command._protocol(args).brain_model).realism

    assert level() == PRESETS["lab"]
    assert level("--protocol", str(own)) == Realism(affect_gain=0.5)
    assert level("--protocol", str(own), "--realism", "clean") == PRESETS["clean"]
    assert level("--realism", "faint", "--family", "lpp") == PRESETS["faint"]
    with pytest.raises(SystemExit):
        parser.parse_args(["brain-model", "--realism", "bogus"])
