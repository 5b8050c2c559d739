"""A participant's epochs with a rating per trial: what estimators are judged on offline.

``eegs bench estimator`` (and the brain model's realism checks) draw calibration blocks
from one :class:`LabelledEpochs` per participant, from three sources:

- a recording with labelled events (:func:`read_labelled_recording`): any file
  ``eegs replay`` reads, such as the eeg-notebooks Muse CSV of faces and houses
  (:mod:`workers.muse_csv`); each label stands for a rating (faces 7, houses 3: a
  participant who likes faces, :data:`N170_RATINGS`). Preprocessed as the issue that
  brought real EEG in fixed it (:class:`RecordingPreprocessing`): 0.5-30 Hz (MNE's
  zero-phase FIR), epochs -0.2 to 1.0 s with the pre-stimulus baseline removed, epochs
  with a peak-to-peak amplitude above 150 µV dropped;
- an MNE Epochs file with a numeric metadata column of ratings
  (:func:`read_epochs_file`): a lab's own past sessions (``eegs export-epochs``
  writes one);
- a simulated participant of the brain model (:func:`simulate_participant`), seeing
  the pilot's labelled calibration images (:func:`calibration_images`) and rating them
  through :class:`models.brain.ratings.RatingModel`, as ``eegs bench loop`` calibrates.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from experiment_protocols import Protocol
from models.rewards.base import EpochData
from workers.errors import InputError

#: The faces/houses recordings' labels as ratings: a participant who likes faces.
N170_RATINGS: dict[str, float] = {"face": 7.0, "house": 3.0}
#: The rating scale of label ratings (the protocols' default 1-9).
LABEL_SCALE = (1.0, 9.0)


class LabelledEpochsError(InputError):
    """A file, folder or column that cannot give labelled epochs, with the reason."""


@dataclass
class LabelledEpochs:
    """One participant's epochs (µV) and ratings; ``details`` says where they came from."""

    dataset: str
    participant: str
    data: np.ndarray  # (n_trials, n_channels, n_times), µV
    ch_names: list[str]
    sfreq: float
    tmin: float
    ratings: np.ndarray  # (n_trials,)
    scale: tuple[float, float]
    labels: list[str] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ratings)

    def subset(self, index: Sequence[int] | np.ndarray) -> LabelledEpochs:
        """The trials ``index``, in that order."""
        index = np.asarray(index, dtype=int)
        labels = None if self.labels is None else [self.labels[i] for i in index]
        return replace(self, data=self.data[index], ratings=self.ratings[index], labels=labels)

    def epochs(self) -> list[EpochData]:
        """Every trial as the worker gets it."""
        return [EpochData(x, self.ch_names, self.sfreq, self.tmin) for x in self.data]


# -- recordings with labelled events ---------------------------------------------------------
@dataclass(frozen=True)
class RecordingPreprocessing:
    """Offline preprocessing of a real recording (defaults: the faces/houses bench)."""

    l_freq: float = 0.5
    h_freq: float = 30.0
    tmin: float = -0.2
    tmax: float = 1.0
    reject_uv: float | None = 150.0  # peak to peak, any channel


def read_labelled_recording(
    path: str | Path,
    label_ratings: Mapping[str, float] = N170_RATINGS,
    *,
    dataset: str | None = None,
    participant: str | None = None,
    scale: tuple[float, float] = LABEL_SCALE,
    preprocessing: RecordingPreprocessing = RecordingPreprocessing(),
) -> LabelledEpochs:
    """Epochs of every event whose label ``label_ratings`` names, rated by that mapping.

    ``path``: whatever ``eegs replay`` reads (a Muse CSV file or folder of runs, FIF,
    EDF, BDF, BrainVision, EEGLAB...). The participant defaults to the file or folder
    name, the dataset to its parent folder's name.
    """
    import mne

    from workers.muse_csv import is_muse_csv, read_muse_csv

    path = Path(path)
    if not path.exists():
        raise LabelledEpochsError(f"{path}: no such file or folder")
    if is_muse_csv(path):
        raw = read_muse_csv(path)
    else:
        try:
            raw = mne.io.read_raw(path, preload=True, verbose="error")
        except Exception as err:  # MNE raises many types for unreadable files
            raise LabelledEpochsError(f"{path}: MNE cannot read it: {err}") from None
    raw.pick("eeg")
    present = sorted(set(raw.annotations.description) & set(label_ratings))
    if not present:
        raise LabelledEpochsError(
            f"{path}: no event labelled {sorted(label_ratings)} (its events: "
            f"{sorted(set(raw.annotations.description))[:10]})"
        )
    pre = preprocessing
    raw.filter(pre.l_freq, pre.h_freq, verbose="error")
    event_id = {label: k + 1 for k, label in enumerate(present)}
    events, _ = mne.events_from_annotations(raw, event_id=event_id, verbose="error")
    epochs = mne.Epochs(
        raw,
        events,
        event_id,
        tmin=pre.tmin,
        tmax=pre.tmax,
        baseline=(pre.tmin, 0.0) if pre.tmin < 0 else None,
        reject=None if pre.reject_uv is None else {"eeg": pre.reject_uv * 1e-6},
        preload=True,
        verbose="error",
    )
    if len(epochs) == 0:
        raise LabelledEpochsError(f"{path}: every epoch was rejected ({pre})")
    names = {v: k for k, v in event_id.items()}
    labels = [names[c] for c in epochs.events[:, 2]]
    return LabelledEpochs(
        dataset=dataset or path.parent.name,
        participant=participant or path.stem,
        data=(epochs.get_data() * 1e6).astype(np.float32),
        ch_names=list(epochs.ch_names),
        sfreq=float(epochs.info["sfreq"]),
        tmin=float(epochs.tmin),
        ratings=np.asarray([label_ratings[lab] for lab in labels], dtype=np.float64),
        scale=scale,
        labels=labels,
        details={
            "source": str(path),
            "n_events": int(len(events)),
            "n_dropped": int(len(events) - len(epochs)),
            "preprocessing": {
                "band_hz": [pre.l_freq, pre.h_freq],
                "window_s": [pre.tmin, pre.tmax],
                "reject_peak_to_peak_uv": pre.reject_uv,
            },
            "label_ratings": dict(label_ratings),
        },
    )


# -- an MNE Epochs file with a column of ratings -----------------------------------------------
def read_epochs_file(
    path: str | Path,
    rating_column: str,
    *,
    scale: tuple[float, float] | None = None,
    dataset: str = "epochs-file",
    participant: str | None = None,
) -> LabelledEpochs:
    """The EEG channels of an ``*-epo.fif`` file and its metadata column ``rating_column``.

    Trials whose rating is missing are left out. The scale defaults to the column's
    range.
    """
    import mne

    path = Path(path)
    if not path.exists():
        raise LabelledEpochsError(f"{path}: no such file")
    try:
        epochs = mne.read_epochs(path, preload=True, verbose="error")
    except Exception as err:  # MNE raises many types for unreadable files
        raise LabelledEpochsError(f"{path}: not an MNE Epochs file ({err})") from None
    meta = epochs.metadata
    if meta is None:
        raise LabelledEpochsError(
            f"{path}: the epochs have no metadata; expected a numeric column {rating_column!r}"
        )
    if rating_column not in meta.columns:
        raise LabelledEpochsError(
            f"{path}: no metadata column {rating_column!r}; its columns: {list(meta.columns)}"
        )
    import pandas as pd

    values = pd.to_numeric(meta[rating_column], errors="coerce").to_numpy(np.float64)
    wrong = meta[rating_column][np.isnan(values) & meta[rating_column].notna().to_numpy()]
    if len(wrong):
        raise LabelledEpochsError(
            f"{path}: metadata column {rating_column!r} is not numeric "
            f"(epoch {wrong.index[0]}: {wrong.iloc[0]!r})"
        )
    keep = np.flatnonzero(np.isfinite(values))
    if len(keep) < 2 or np.ptp(values[keep]) == 0:
        raise LabelledEpochsError(
            f"{path}: metadata column {rating_column!r} has {len(keep)} ratings that vary "
            f"{'not at all' if len(keep) >= 2 else ''}; expected ratings of many trials"
        )
    epochs = epochs[keep].pick("eeg")
    if not epochs.ch_names:
        raise LabelledEpochsError(f"{path}: no EEG channel")
    y = values[keep]
    return LabelledEpochs(
        dataset=dataset,
        participant=participant or epochs_file_participant(path),
        data=(epochs.get_data() * 1e6).astype(np.float32),
        ch_names=list(epochs.ch_names),
        sfreq=float(epochs.info["sfreq"]),
        tmin=float(epochs.tmin),
        ratings=y,
        scale=scale or (float(y.min()), float(y.max())),
        details={
            "source": str(path),
            "rating_column": rating_column,
            "n_unrated": int(len(values) - len(keep)),
        },  # fmt: skip
    )


def epochs_file_participant(path: str | Path) -> str:
    """The participant an epochs file stands for by default: its name less ``-epo.fif``."""
    name = Path(path).name
    for suffix in (".fif.gz", ".fif", "-epo", "_epo"):
        name = name.removesuffix(suffix)
    return name


# -- the brain model ------------------------------------------------------------------------------
def simulation_seed(subject: int, *tags: str | int) -> int:
    """A reproducible seed for each (subject, purpose)."""
    key = zlib.crc32("/".join(map(str, tags)).encode())
    return int(np.random.default_rng([int(subject) & 0xFFFFFFFF, key]).integers(0, 2**31 - 1))


def normative_valence(rgb: np.ndarray) -> float:
    """The pilot's normative rule for its labelled sets: mean HSV value plus saturation."""
    from PIL import Image

    hsv = np.asarray(Image.fromarray(rgb).convert("HSV"), dtype=np.float64) / 255.0
    return float(hsv[..., 2].mean() + hsv[..., 1].mean())


def calibration_images(n_per_class: int, seed: int = 0, size: int = 128) -> np.ndarray:
    """(2 n, size, size, 3) uint8: the pilot's calibration set, in memory.

    As ``eegs pilot`` makes its labelled folders: 8 n procedural images drawn from the
    renderer's prior, the n lowest by the normative rule ("sadness") then the n highest
    ("amusement").
    """
    from models.backends.procedural import ProceduralRenderer, sample_parameters

    rng = np.random.default_rng([seed, 7])
    n_draw = max(8 * n_per_class, 32)
    params = sample_parameters(n_draw, rng)
    seeds = rng.integers(0, 2**31 - 1, n_draw)
    rgb = ProceduralRenderer(size).render(params, [int(s) for s in seeds])
    images = (rgb * 255 + 0.5).astype(np.uint8)
    order = np.argsort([normative_valence(im) for im in images])
    return images[np.concatenate([order[:n_per_class], order[-n_per_class:]])]


def simulate_participant(
    protocol: Protocol, family: str, subject: int, images: np.ndarray
) -> LabelledEpochs:
    """The brain model's subject ``subject`` of ``family`` shown ``images`` and rating them.

    Offline and faster than real time, with the session's code: the protocol's brain
    model (at its preprocessing rate), its epoch window and baseline, and the subject's
    own :class:`~models.brain.ratings.RatingModel` on the protocol's rating scale. The
    images are shown in an order of the subject's own.
    """
    from models.brain.ratings import RatingModel
    from workers.brain_model import build_model

    overrides: dict[str, Any] = {
        "brain_model.subject_seed": int(subject),
        "brain_model.family": family,
    }
    if protocol.preprocessing.resample_hz:  # simulate at the rate the estimators see
        overrides["brain_model.sfreq"] = protocol.preprocessing.resample_hz
    p = protocol.with_overrides(overrides)
    brain = build_model(p.brain_model)
    order = np.random.default_rng(simulation_seed(subject, "order")).permutation(len(images))
    shown = [images[i] for i in order]
    ep = p.epochs
    X = brain.simulate_epochs(
        shown, tmin=ep.tmin, tmax=ep.tmax, seed=simulation_seed(subject, "calibration")
    )
    if ep.baseline is not None:
        t = ep.tmin + np.arange(X.shape[-1]) / brain.sfreq
        sel = (t >= ep.baseline[0] - 1e-9) & (t <= ep.baseline[1] + 1e-9)
        X = X - X[:, :, sel].mean(axis=2, keepdims=True)
    r = p.presentation.ratings
    rating_model = RatingModel.draw(subject)
    rng = np.random.default_rng(simulation_seed(subject, "ratings"))
    affect = [brain.affect(im) for im in shown]
    ratings = [rating_model.rate(v, a, r.low, r.high, rng)[0] for v, a in affect]
    n = len(images) // 2
    labels = ["sadness" if i < n else "amusement" for i in order]
    return LabelledEpochs(
        dataset="brain-model",
        participant=family,
        data=X.astype(np.float32),
        ch_names=list(brain.ch_names),
        sfreq=float(brain.sfreq),
        tmin=float(ep.tmin),
        ratings=np.asarray(ratings, dtype=np.float64),
        scale=(float(r.low), float(r.high)),
        labels=labels,
        details={
            "family": family,
            "subject_seed": int(subject),
            "hidden_valence": [round(float(v), 4) for v, _ in affect],
        },
    )
