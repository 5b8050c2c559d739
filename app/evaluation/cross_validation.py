"""Cross-validate the emotion decoders on labelled recordings and write Table 1.

Each ``--dataset NAME PATH...`` is one stimulus set (e.g. ArtPhoto, EEGS): session
directories (one subject each; labels from the markers' "label" field) or .npz files
with arrays ``X`` (epochs x channels x samples, µV), ``y`` (labels) and optionally
``subject``, ``sfreq``, ``tmin``. Classes: 0 = sadness, 1 = amusement (names set by
the protocol's decoder.negative_label / positive_label); epochs with other labels are
left out. Epochs are cropped to decoder.window_s and keep decoder.channels (all
when it is empty).

Protocol: stratified k-fold within each subject (decoder.evaluation.folds), every
fold repeated for each seed (decoder.evaluation.seeds); with several subjects, also
leave-one-subject-out. Writes OUT/table1.csv and OUT/table1.md (rows dataset x
classifier x scheme; F1-Amuse, F1-Sad, F1-avg as mean ± SD over folds), one
confusion-matrix PNG per row and OUT/folds.json with every fold's predictions and
figures. Without decoder.encoder_checkpoint, ATM-S-FC uses a randomly initialised
frozen encoder, i.e. it is a random-feature model; the table says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("eegs.evaluate")
SCHEMES = {"within": "within-subject k-fold", "loso": "leave-one-subject-out"}


# -- labelled epochs -----------------------------------------------------------------------
@dataclass
class LabelledEpochs:
    """Cropped epochs with binary labels and the subject of each epoch."""

    X: np.ndarray  # (n, channels, times) float32 µV
    y: np.ndarray  # (n,) int 0/1
    subject: np.ndarray  # (n,) str
    sfreq: float
    ch_names: list[str] | None
    notes: list[str] = field(default_factory=list)

    @property
    def subjects(self) -> list[str]:
        """Distinct subjects in order of appearance."""
        return list(dict.fromkeys(self.subject.tolist()))


def label_of(value: Any, positive: str, negative: str) -> int | None:
    """1 for the positive label, 0 for the negative one, None for anything else."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer) and int(value) in (0, 1):
        return int(value)
    text = str(value).strip().lower()
    if text == positive.lower():
        return 1
    if text == negative.lower():
        return 0
    return None


def _session_subject(path: Path) -> str:
    from workers.session_store import SessionStore

    info = SessionStore(path).read_info()
    return str(info.get("subject") or path.resolve().name)


def read_session_epochs(path: Path) -> list:
    """Stored epochs of a session directory (an InputError when there are none)."""
    from workers.errors import InputError
    from workers.session_store import SessionStore

    if not (path / "epochs").is_dir():
        raise InputError(f"{path}: not a session directory (no epochs/ folder)")
    stored = SessionStore(path).epochs()
    if not stored:
        raise InputError(f"{path}: the session has no epochs")
    return stored


def load_labelled(paths: list[Path], decoder) -> LabelledEpochs:
    """Read session directories and .npz files; label, crop, keep ``decoder.channels``."""
    from models.decoders.classifiers import ClassifierError, crop_window, pick_channels
    from workers.errors import InputError

    xs, ys, subs, notes = [], [], [], []
    sfreq: float | None = None
    ch_names: list[str] | None = None
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such session directory or file")
        if path.is_dir():
            subject = _session_subject(path)
            n_other = n_flag = 0
            for ep in read_session_epochs(path):
                marker = ep.meta.get("marker") or {}
                lab = label_of(marker.get("label"), decoder.positive_label, decoder.negative_label)
                if lab is None:
                    n_other += 1
                    continue
                if decoder.exclude_flagged and (ep.meta.get("quality") or {}).get("flags"):
                    n_flag += 1
                    continue
                fs, names = float(ep.meta["sfreq"]), list(ep.meta.get("ch_names") or [])
                if sfreq is None:
                    sfreq, ch_names = fs, names
                _check_same(path, fs, names, sfreq, ch_names)
                try:
                    xs.append(crop_window(ep.data, fs, float(ep.meta["tmin"]), decoder.window_s))
                except ClassifierError as err:
                    raise InputError(f"{path}, trial {ep.trial_id}: {err}") from None
                ys.append(lab)
                subs.append(subject)
            if n_other or n_flag:
                notes.append(
                    f"{path}: left out {n_other} epochs with other labels"
                    + (f" and {n_flag} quality-flagged epochs" if n_flag else "")
                )
        else:
            x, y, s, fs, names = _read_npz(path, decoder)
            if sfreq is None:
                sfreq, ch_names = fs, names
            _check_same(path, fs, names or ch_names or [], sfreq, ch_names or [])
            xs.extend(x)
            ys.extend(y)
            subs.extend(s)
    if not xs:
        raise InputError(
            f"{', '.join(map(str, paths))}: no epoch is labelled "
            f"{decoder.positive_label!r} or {decoder.negative_label!r}"
        )
    try:
        X, ch_names = pick_channels(np.stack(xs).astype(np.float32), ch_names, decoder.channels)
    except ClassifierError as err:
        raise InputError(f"{', '.join(map(str, paths))}: {err}") from None
    return LabelledEpochs(X, np.asarray(ys, int), np.asarray(subs, str), sfreq, ch_names, notes)


def _check_same(path, fs, names, sfreq, ch_names) -> None:
    from workers.errors import InputError

    if abs(fs - sfreq) > 1e-6:
        raise InputError(f"{path}: sampling rate {fs:g} Hz differs from {sfreq:g} Hz")
    if names and ch_names and names != ch_names:
        raise InputError(f"{path}: channels {names} differ from {ch_names}")


def _read_npz(path: Path, decoder):
    from models.decoders.classifiers import ClassifierError, crop_window
    from workers.errors import InputError

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable .npz of plain arrays ({err})") from None
    for key in ("X", "y"):
        if key not in arrays:
            raise InputError(f"{path}: missing array '{key}' (have {sorted(arrays)})")
    X = arrays["X"]
    if X.ndim != 3:
        raise InputError(f"{path}: X must be (epochs, channels, samples); got {X.shape}")
    if len(arrays["y"]) != len(X):
        raise InputError(f"{path}: {len(X)} epochs but {len(arrays['y'])} labels")
    sfreq = float(arrays.get("sfreq", 250.0))
    tmin = float(arrays.get("tmin", 0.0))
    subject = arrays.get("subject", np.full(len(X), path.stem))
    names = [str(c) for c in arrays["ch_names"]] if "ch_names" in arrays else None
    labels = [label_of(v, decoder.positive_label, decoder.negative_label) for v in arrays["y"]]
    keep = [i for i, lab in enumerate(labels) if lab is not None]
    try:
        x = crop_window(X[keep], sfreq, tmin, decoder.window_s)
    except ClassifierError as err:
        raise InputError(f"{path}: {err}") from None
    return list(x), [labels[i] for i in keep], [str(subject[i]) for i in keep], sfreq, names


# -- cross-validation ----------------------------------------------------------------------
def fold_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """F1 of each class and their mean (sklearn), plus accuracy."""
    from sklearn.metrics import accuracy_score, f1_score

    f1_amuse = f1_score(y_true, y_pred, pos_label=1, zero_division=0)
    f1_sad = f1_score(y_true, y_pred, pos_label=0, zero_division=0)
    return {
        "f1_amuse": float(f1_amuse),
        "f1_sad": float(f1_sad),
        "f1_avg": float((f1_amuse + f1_sad) / 2),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }


def splits(data: LabelledEpochs, folds: int, seed: int, loso: bool):
    """Yield (scheme, subject, fold, train_idx, test_idx, note)."""
    from sklearn.model_selection import StratifiedKFold

    for subject in data.subjects:
        idx = np.flatnonzero(data.subject == subject)
        counts = np.bincount(data.y[idx], minlength=2)
        k = int(min(folds, counts.min()))
        if k < 2:
            yield (
                "within",
                subject,
                None,
                None,
                None,
                (
                    f"subject {subject}: skipped, {counts[0]} sadness / {counts[1]} amusement "
                    f"epochs (each class needs >= 2 for k-fold)"
                ),
            )
            continue
        note = None if k == folds else f"subject {subject}: {k} folds (smallest class: {k})"
        skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        for f, (tr, te) in enumerate(skf.split(idx, data.y[idx])):
            yield "within", subject, f, idx[tr], idx[te], note
    if loso and len(data.subjects) > 1:
        for f, subject in enumerate(data.subjects):
            te = np.flatnonzero(data.subject == subject)
            tr = np.flatnonzero(data.subject != subject)
            if len(np.unique(data.y[tr])) < 2:
                yield "loso", subject, None, None, None, f"LOSO {subject}: one class in training"
                continue
            yield "loso", subject, f, tr, te, None


def cross_validate(
    data: LabelledEpochs,
    kinds: list[str],
    decoder,
    *,
    dataset: str,
    encoder=None,
    progress=None,
) -> list[dict[str, Any]]:
    """Train and test every classifier on every split; one record per fold."""
    from models.decoders.classifiers import make_classifier

    ev = decoder.evaluation
    settings = decoder.model_dump()
    n_ch, n_t = data.X.shape[1:]
    records = []
    for kind in kinds:
        for seed in ev.seeds:
            for scheme, subject, fold, tr, te, note in splits(
                data, ev.folds, seed, ev.leave_one_subject_out
            ):
                if note and note not in data.notes:
                    data.notes.append(note)
                if tr is None:
                    continue
                clf = make_classifier(
                    kind,
                    n_ch,
                    n_t,
                    data.sfreq,
                    settings,
                    seed=seed,
                    encoder=encoder if kind == "atms_fc" else None,
                )
                clf.fit(data.X[tr], data.y[tr])
                proba = clf.predict_proba(data.X[te])
                pred = proba.argmax(1)
                rec = {
                    "dataset": dataset,
                    "classifier": kind,
                    "scheme": scheme,
                    "subject": subject,
                    "seed": seed,
                    "fold": fold,
                    "n_train": int(len(tr)),
                    "n_test": int(len(te)),
                    **fold_scores(data.y[te], pred),
                    "test_index": te.tolist(),
                    "y_true": data.y[te].tolist(),
                    "y_pred": pred.tolist(),
                    "p_amusement": np.round(proba[:, 1], 6).tolist(),
                }
                if kind == "atms_fc":
                    rec["encoder"] = clf.encoder_source
                records.append(rec)
                if progress is not None:
                    progress(rec)
    return records


# -- the table -----------------------------------------------------------------------------
#: The F1 columns :func:`summarise` fills in every row (CSV order).
F1_COLUMNS = [
    "F1-Amuse",
    "F1-Sad",
    "F1-avg",
    "f1_amuse_mean",
    "f1_amuse_sd",
    "f1_sad_mean",
    "f1_sad_sd",
    "f1_avg_mean",
    "f1_avg_sd",
]


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, classifier, scheme): mean and SD (ddof=1) over folds."""
    from models.decoders.classifiers import DISPLAY_NAMES

    rows = []
    keys = list(dict.fromkeys((r["dataset"], r["classifier"], r["scheme"]) for r in records))
    for dataset, kind, scheme in keys:
        sel = [
            r
            for r in records
            if (r["dataset"], r["classifier"], r["scheme"]) == (dataset, kind, scheme)
        ]
        row: dict[str, Any] = {
            "dataset": dataset,
            "classifier": DISPLAY_NAMES.get(kind, kind),
            "scheme": scheme,
            "n_folds": len(sel),
            "n_subjects": len({r["subject"] for r in sel}),
        }
        for key, label in (("f1_amuse", "F1-Amuse"), ("f1_sad", "F1-Sad"), ("f1_avg", "F1-avg")):
            v = np.array([r[key] for r in sel], float)
            mean = float(v.mean())
            sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
            row[f"{key}_mean"], row[f"{key}_sd"] = mean, sd
            row[label] = f"{mean:.2f} ± {sd:.2f}" if np.isfinite(sd) else f"{mean:.2f}"
        rows.append(row)
    return rows


TABLE_COLUMNS = ["dataset", "classifier", "scheme", "n_subjects", "n_folds", *F1_COLUMNS]


def write_table(rows: list[dict[str, Any]], out: Path, notes: list[str]) -> None:
    """table1.csv (formatted and numeric columns) and table1.md."""
    import csv

    with (out / "table1.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=TABLE_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    lines = [
        "Table 1. Emotion classification (binary: Sadness vs Amusement); F1 as mean ± SD "
        "over folds.",
        "",
        "| Dataset | Classifier | Scheme | Folds | F1-Amuse ↑ | F1-Sad ↑ | F1-avg ↑ |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['classifier']} | {SCHEMES[r['scheme']]} | {r['n_folds']} "
            f"| {r['F1-Amuse']} | {r['F1-Sad']} | {r['F1-avg']} |"
        )
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    (out / "table1.md").write_text("\n".join(lines) + "\n")


def plot_confusions(
    records: list[dict[str, Any]],
    out: Path,
    class_names: dict[str, tuple[str, str]] | None = None,
) -> list[Path]:
    """One confusion matrix per (dataset, classifier, scheme), summed over folds.

    ``class_names`` maps a dataset to the names of its classes 0 and 1 when they are not
    sadness and amusement (e.g. low and high arousal).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    from models.decoders.classifiers import CLASS_NAMES, DISPLAY_NAMES

    paths = []
    keys = list(dict.fromkeys((r["dataset"], r["classifier"], r["scheme"]) for r in records))
    for dataset, kind, scheme in keys:
        sel = [
            r
            for r in records
            if (r["dataset"], r["classifier"], r["scheme"]) == (dataset, kind, scheme)
        ]
        yt = np.concatenate([r["y_true"] for r in sel])
        yp = np.concatenate([r["y_pred"] for r in sel])
        cm = confusion_matrix(yt, yp, labels=[0, 1], normalize="true")
        fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=120)
        names = [n.capitalize() for n in (class_names or {}).get(dataset, CLASS_NAMES)]
        ConfusionMatrixDisplay(cm, display_labels=names).plot(
            ax=ax, cmap="Blues", values_format=".2f", colorbar=False
        )
        ax.set_title(
            f"{dataset} / {DISPLAY_NAMES.get(kind, kind)}\n{SCHEMES[scheme]}, {len(sel)} folds",
            fontsize=8,
        )
        fig.tight_layout()
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset)
        path = out / f"confusion-{safe}-{kind}-{scheme}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def save_decoder(spec: list[str], decoder, path: Path) -> Path:
    """Fit ``decoder.classifier`` on all labelled epochs of one dataset and save it."""
    import time

    from models.decoders.atms import CheckpointError
    from models.decoders.classifiers import ClassifierError, make_classifier
    from workers.errors import InputError

    name, *paths = spec
    data = load_labelled([Path(p) for p in paths], decoder)
    try:
        clf = make_classifier(
            decoder.classifier, data.X.shape[1], data.X.shape[2], data.sfreq, decoder.model_dump()
        )
        t0 = time.perf_counter()
        clf.fit(data.X, data.y)
        fit_s = time.perf_counter() - t0
    except (CheckpointError, ClassifierError) as err:
        raise InputError(f"{name}: {err}") from None
    clf.save(path)
    random = (
        " (random frozen encoder: a random-feature model)"
        if getattr(clf, "random_encoder", False)
        else ""
    )
    print(f"fitted {clf.kind}{random} on {len(data.y)} epochs of {name} in {fit_s:.1f} s -> {path}")
    return path
