"""Subject families of the brain model, and the simulated participant's ratings.

Families change which components carry the hidden valence (models/brain/response.py,
"Subject families"); these tests check each one where it should differ: the frontal
alpha asymmetry index follows valence in ``asymmetry`` and not in ``lpp``, the LPP
follows it in ``lpp`` and not in ``asymmetry``, a ``weak`` responder's effects are a
fraction of ``mixed``'s, and the visual ERPs and the hidden affect (the oracle) do not
change. Everything is seeded: no result depends on timing.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import butter, sosfiltfilt
from test_brain_model import make_images
from threadpoolctl import threadpool_limits

from app.cli import build_parser
from app.commands import brain_model as brain_model_command
from experiment_protocols import ProtocolError, load_protocol
from experiment_protocols.brain_model import SUBJECT_FAMILIES as PROTOCOL_FAMILIES
from models.brain.families.base import SubjectFamily, family_class
from models.brain.ratings import RatingModel
from models.brain.response import BrainModel
from workers.brain_model import build_model

pytestmark = pytest.mark.timeout(120)

FS = 250.0
SEEDS = (0, 1, 2)
#: The asymmetry reward's homologous frontal pairs (left, right).
PAIRS = [("F3", "F4"), ("F5", "F6"), ("F7", "F8"), ("FC3", "FC4"), ("AF3", "AF4")]
#: The LPP reward's centro-parietal channels.
LPP_CHANNELS = ["Pz", "P1", "P2", "P3", "P4", "POz", "CPz"]
SUBJECT_FAMILIES = tuple(PROTOCOL_FAMILIES)
_ALPHA_SOS = butter(4, (8.0, 13.0), btype="band", fs=FS, output="sos")


@pytest.fixture(scope="module")
def images() -> list:
    return make_images(80, seed=3)


def model(seed: int, family: str) -> BrainModel:
    """The family's subject with its affect in full (``clean``): the mechanisms in the clear.

    At the default realism (``lab``) the same components carry the affect, as faintly
    as in real EEG (tests/test_brain_realism.py).
    """
    return BrainModel(seed, sfreq=FS, family=family, realism="clean")


def faa_index(epochs: np.ndarray, names: list[str], tmin: float = -0.2) -> np.ndarray:
    """ln P(right) - ln P(left) in 8-13 Hz over 0.3-1.0 s, mean over the pairs, per epoch."""
    left = [names.index(a) for a, _ in PAIRS]
    right = [names.index(b) for _, b in PAIRS]
    alpha = sosfiltfilt(_ALPHA_SOS, epochs, axis=-1)
    span = slice(int(round((0.3 - tmin) * FS)), int(round((1.0 - tmin) * FS)))
    power = (alpha[..., span] ** 2).mean(-1)
    return (np.log(power[:, right]) - np.log(power[:, left])).mean(1)


def lpp_valence_coef(m: BrainModel, images: list) -> float:
    """µV of the noise-free LPP (0.4-0.8 s, centro-parietal) per unit valence, arousal held."""
    affect = np.array([m.affect(im) for im in images])
    picks = [m.ch_names.index(ch) for ch in LPP_CHANNELS]
    lpp = np.array([m.evoked(im)[picks, int(0.4 * FS) : int(0.8 * FS)].mean() for im in images])
    x = np.column_stack([np.ones(len(images)), affect])
    return float(np.linalg.lstsq(x, lpp, rcond=None)[0][1])


def paired_faa_effect(m: BrainModel, images: list, n: int = 20) -> float:
    """FAA index of the most minus the least pleasant image, per unit valence.

    Both images are shown ``n`` times over the same background (same noise seed), so
    the difference is the model's own valence effect, not the background's.
    """
    valence = np.array([m.affect(im)[0] for im in images])
    best, worst = images[int(np.argmax(valence))], images[int(np.argmin(valence))]
    with threadpool_limits(1):
        a = faa_index(m.simulate_epochs([best] * n, seed=5), m.ch_names)
        b = faa_index(m.simulate_epochs([worst] * n, seed=5), m.ch_names)
    return float((a - b).mean() / (valence.max() - valence.min()))


def valence_map(m: BrainModel, images: list) -> tuple[np.ndarray, float]:
    """Valence effect of the noise-free response: unit topography (0.4-0.8 s) and onset (s).

    Per channel and sample, the response regressed on valence and arousal; the onset is
    when the valence effect at its peak channel first reaches half its maximum.
    """
    affect = np.array([m.affect(im) for im in images])
    ev = np.array([m.evoked(im) for im in images])
    x = np.column_stack([np.ones(len(images)), affect])
    coef = np.linalg.lstsq(x, ev.reshape(len(images), -1), rcond=None)[0][1]
    coef = coef.reshape(ev.shape[1:])
    topo = coef[:, int(0.4 * FS) : int(0.8 * FS)].mean(1)
    course = np.abs(coef[int(np.argmax(np.abs(topo)))])
    onset = float(np.argmax(course > 0.5 * course.max()) / FS)
    return topo / np.linalg.norm(topo), onset


# -- the families ------------------------------------------------------------------------------
def test_families_are_the_protocol_choices():
    assert SUBJECT_FAMILIES == ("standard", "asymmetry", "lpp", "mixed", "weak")
    for name in SUBJECT_FAMILIES:  # each protocol name is a family module's
        assert family_class(name).name == name
    assert set(SubjectFamily.registry) >= set(SUBJECT_FAMILIES)
    assert BrainModel(0).family == "standard"
    with pytest.raises(ValueError, match="unknown subject family 'bogus'"):
        BrainModel(0, family="bogus")


def test_oracle_is_the_same_in_every_family(images):
    for seed in (0, 7):
        want = [BrainModel(seed).affect(im) for im in images[:30]]
        for family in SUBJECT_FAMILIES:
            assert [model(seed, family).affect(im) for im in images[:30]] == want, family


def test_visual_erps_are_the_same_in_every_family(images):
    names = BrainModel(0).ch_names
    posterior = [names.index(ch) for ch in ("PO7", "PO8", "O1", "Oz", "O2")]
    early = slice(0, int(0.2 * FS))  # C1, P1, chromatic negativity, N1
    n1 = slice(int(0.14 * FS), int(0.2 * FS))
    for seed in (0, 1):
        ref = np.array([model(seed, "standard").evoked(im) for im in images[:20]])
        for family in SUBJECT_FAMILIES[1:]:
            ev = np.array([model(seed, family).evoked(im) for im in images[:20]])
            for a, b in zip(ref[:, posterior, early], ev[:, posterior, early], strict=True):
                assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99, family
            n1_ref = ref[:, posterior, n1].min(2).mean()
            assert ev[:, posterior, n1].min(2).mean() == pytest.approx(n1_ref, rel=0.05)


def test_frontal_alpha_asymmetry_follows_valence_in_asymmetry_not_in_lpp(images):
    """Single trials, 80 images per subject: the asymmetry index's correlation with valence."""
    r = {}
    for family in ("asymmetry", "lpp"):
        for seed in SEEDS:
            m = model(seed, family)
            valence = np.array([m.affect(im)[0] for im in images])
            with threadpool_limits(1):
                epochs = m.simulate_epochs(images, seed=0)
            r[family, seed] = np.corrcoef(faa_index(epochs, m.ch_names), valence)[0, 1]
    print({k: round(v, 2) for k, v in r.items()})
    asym = np.array([r["asymmetry", s] for s in SEEDS])
    lpp = np.array([r["lpp", s] for s in SEEDS])
    assert asym.mean() > 0.3
    assert asym.min() > 0.2
    assert abs(lpp.mean()) < 0.15
    assert np.abs(lpp).max() < 0.3
    # with the background held fixed, the lpp family's asymmetry does not move at all
    for seed in SEEDS:
        assert abs(paired_faa_effect(model(seed, "lpp"), images[:40])) < 0.02
        assert paired_faa_effect(model(seed, "asymmetry"), images[:40]) > 0.4


def test_lpp_follows_valence_in_lpp_not_in_asymmetry(images):
    """Noise-free LPP, valence effect with arousal held; the sign is the subject's own."""
    coef = {(f, s): lpp_valence_coef(model(s, f), images[:60])
            for f in ("asymmetry", "lpp") for s in range(6)}  # fmt: skip
    print({k: round(v, 2) for k, v in coef.items()})
    lpp = np.array([coef["lpp", s] for s in range(6)])
    asym = np.array([coef["asymmetry", s] for s in range(6)])
    assert np.abs(lpp).min() > 3.0  # µV per unit valence
    assert np.abs(asym).max() < 1.0  # what is left: sensory components that share features
    # a positivity offset in some subjects, the negativity bias in others
    assert (lpp > 0).any()
    assert (lpp < 0).any()
    # the standard family's LPP keeps its negativity bias
    assert all(lpp_valence_coef(model(s, "standard"), images[:60]) < 0 for s in range(3))


def test_weak_responder_has_a_fraction_of_the_mixed_effects(images):
    for seed in SEEDS:
        mixed, weak = model(seed, "mixed"), model(seed, "weak")
        faa_mixed = paired_faa_effect(mixed, images[:40])
        faa_weak = paired_faa_effect(weak, images[:40])
        assert faa_mixed > 0.2
        assert 0 < faa_weak < 0.3 * faa_mixed
        lpp_mixed = lpp_valence_coef(mixed, images[:60])
        lpp_weak = lpp_valence_coef(weak, images[:60])
        assert abs(lpp_weak) < 0.35 * abs(lpp_mixed)


def test_subjects_of_one_family_have_their_own_patterns(images):
    # LPP: topography and onset of the valence effect
    topo0, onset0 = valence_map(model(0, "lpp"), images[:40])
    topo1, onset1 = valence_map(model(1, "lpp"), images[:40])
    assert abs(topo0 @ topo1) < 0.95
    assert abs(onset0 - onset1) >= 0.04
    again, _ = valence_map(model(0, "lpp"), images[:40])
    np.testing.assert_array_equal(topo0, again)  # one seed, one person
    # frontal alpha sources and window: the subject's own, the same in every family
    a0, a1 = model(0, "asymmetry")._subject, model(1, "asymmetry")._subject
    assert not np.allclose(a0.frontal_alpha_centres, a1.frontal_alpha_centres)
    assert a0.alpha_windows != a1.alpha_windows
    assert model(0, "mixed")._subject.frontal_alpha_centres == a0.frontal_alpha_centres
    assert model(0, "standard")._subject.frontal_alpha_centres != a0.frontal_alpha_centres


# -- protocol and command line ---------------------------------------------------------------
def test_protocol_key_and_flag(tmp_path):
    assert load_protocol().brain_model.family == "standard"
    bad = tmp_path / "bad.toml"
    bad.write_text('[brain_model]\nfamily = "bogus"\n')
    with pytest.raises(ProtocolError, match=r"brain_model\.family"):
        load_protocol(bad)
    mixed = tmp_path / "mixed.toml"
    mixed.write_text('[brain_model]\nfamily = "mixed"\nsfreq = 250.0\n')
    parser = build_parser()

    def family(*argv: str) -> str:
        args = parser.parse_args(["brain-model", *argv])
        return brain_model_command._protocol(args).brain_model.family

    assert family() == "standard"
    assert family("--protocol", str(mixed)) == "mixed"
    assert family("--protocol", str(mixed), "--family", "lpp") == "lpp"
    with pytest.raises(SystemExit):
        parser.parse_args(["brain-model", "--family", "bogus"])
    settings = brain_model_command._protocol(
        parser.parse_args(["brain-model", "--protocol", str(mixed), "--family", "weak"])
    ).brain_model
    assert build_model(settings).family == "weak"


# -- ratings -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hidden() -> np.ndarray:
    """Hidden (valence, arousal) of 200 procedural images for subject 0."""
    m = BrainModel(0)
    return np.array([m.affect(im) for im in make_images(200, seed=4)])


def test_ratings_are_integers_in_range_and_follow_the_hidden_affect(hidden):
    for seed, (low, high) in ((0, (1, 9)), (1, (1, 9)), (2, (1, 7))):
        rater = RatingModel.draw(seed)
        rng = np.random.default_rng(0)
        rows = [rater.rate(v, a, low, high, rng) for v, a in hidden]
        points = np.array([(v, a) for v, a, _ in rows])
        delays = np.array([d for *_, d in rows])
        assert all(isinstance(v, int) and isinstance(a, int) for v, a, _ in rows)
        assert points.min() >= low
        assert points.max() <= high
        for k in (0, 1):
            r = np.corrcoef(points[:, k], hidden[:, k])[0, 1]
            assert 0.5 < r < 0.97, (seed, k, r)
        assert np.all(delays > 0)
        assert np.all(np.isfinite(delays))
        assert 0.5 < np.median(delays) < 2.5


def test_rating_bias_is_the_subjects_own(hidden):
    """The same hidden affect, rated by two subjects: their scale use differs."""
    a, b = RatingModel.draw(0), RatingModel.draw(1)
    assert a == RatingModel.draw(0)
    va, _, da = a.rate_many(hidden[:, 0], hidden[:, 1], 1, 9, np.random.default_rng(0))
    vb, _, db = b.rate_many(hidden[:, 0], hidden[:, 1], 1, 9, np.random.default_rng(0))
    assert abs(va.mean() - vb.mean()) > 0.5
    assert np.median(da) != pytest.approx(np.median(db), rel=0.05)


def test_ratings_are_deterministic_given_the_generator(hidden):
    rater = RatingModel.draw(3)
    v, a = hidden[:10, 0], hidden[:10, 1]
    batch = rater.rate_many(v, a, 1, 9, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    one_by_one = [rater.rate(x, y, 1, 9, rng) for x, y in zip(v, a, strict=True)]
    assert [p for p, _, _ in one_by_one] == batch[0].tolist()
    assert [p for _, p, _ in one_by_one] == batch[1].tolist()
    np.testing.assert_allclose([d for *_, d in one_by_one], batch[2])
    assert rater.rate(0.2, 0.5, rng=11) == rater.rate(0.2, 0.5, rng=11)
    with pytest.raises(ValueError, match="low < high"):
        rater.rate(0.0, 0.5, 5, 5, rng=0)
    with pytest.raises(ValueError, match="valence"):
        rater.rate(1.5, 0.5, rng=0)
    with pytest.raises(ValueError, match="arousal"):
        rater.rate(0.0, -0.1, rng=0)
