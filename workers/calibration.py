"""The affective reward with a decoder fitted in the session, on its own calibration block.

With ``generation.reward.mode = "affective"`` and ``decoder = "calibration"``, the worker
keeps every epoch whose marker carries one of the decoder's two labels
(``decoder.positive_label`` / ``negative_label``, the calibration images' classes)
until the first closed-loop request; then, in idle time, it fits ``decoder.classifier``
on them (ATM-S-FC or EEGNet, :mod:`models.classifiers`), saves it to
``SESSION/decoder/calibration.safetensors`` and from then on rewards each epoch with
the decoder's probability of ``generation.reward.target_class``. Epochs that arrive
while the decoder is being fitted are scored as soon as it is ready.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.rewards import EpochData, Reward, RewardError

logger = logging.getLogger("eegs.calibration")

DECODER_FILE = Path("decoder") / "calibration.safetensors"
CALIBRATION = "calibration"  # the value of generation.reward.decoder that asks for this


class DecoderNotReady(RewardError):
    """An epoch arrived before the calibration decoder was fitted."""


class CalibratedDecoderReward:
    """Affective reward whose decoder is fitted on the session's labelled epochs.

    Parameters
    ----------
    decoder
        The protocol's ``decoder`` section (classifier, window, labels, training).
    target_class
        The class whose probability is the reward.
    session_dir
        Where the fitted decoder is saved (and found again by a resumed worker).
    min_per_class
        Labelled epochs needed of each class before a fit is attempted.
    """

    def __init__(
        self, decoder, target_class: str, session_dir: Path, min_per_class: int = 4
    ) -> None:
        self.settings = decoder
        self.labels = (decoder.negative_label, decoder.positive_label)  # class 0, class 1
        if target_class not in self.labels:
            raise RewardError(
                f"generation.reward.target_class {target_class!r} is not one of the decoder's "
                f"labels {list(self.labels)} (decoder.negative_label / positive_label)"
            )
        self.column = self.labels.index(target_class)
        self.path = Path(session_dir) / DECODER_FILE
        self.min_per_class = min_per_class
        self.X: list[np.ndarray] = []
        self.y: list[int] = []
        self.ch_names: list[str] | None = None
        self.sfreq: float | None = None
        self.classifier = None
        self._lock = threading.Lock()
        if self.path.exists():
            self._load()

    @property
    def ready(self) -> bool:
        """Whether epochs can be scored."""
        return self.classifier is not None

    def label_of(self, marker: dict[str, Any]) -> int | None:
        """Class index of a labelled (calibration) epoch's marker, else None."""
        label = marker.get("label")
        return self.labels.index(label) if label in self.labels else None

    def add(self, epoch: EpochData, label: int) -> None:
        """Keep one labelled epoch for the fit."""
        x = self._window(epoch)
        with self._lock:
            if self.ch_names is None:
                self.ch_names, self.sfreq = list(epoch.ch_names), float(epoch.sfreq)
            elif list(epoch.ch_names) != self.ch_names or float(epoch.sfreq) != self.sfreq:
                raise RewardError("calibration epochs changed channels or sampling rate")
            self.X.append(x)
            self.y.append(label)

    def can_fit(self) -> bool:
        """Enough labelled epochs of both classes, and no decoder yet."""
        with self._lock:
            counts = np.bincount(np.asarray(self.y, dtype=int), minlength=2)
        return not self.ready and bool((counts >= self.min_per_class).all())

    def fit(self) -> dict[str, Any]:
        """Fit, save and switch to the decoder; returns what the session log keeps."""
        from models.classifiers import make_classifier

        with self._lock:
            X = np.stack(self.X).astype(np.float32)
            y = np.asarray(self.y, dtype=int)
        s = self.settings
        clf = make_classifier(
            s.classifier, X.shape[1], X.shape[2], self.sfreq, s.model_dump(), seed=0
        )
        t0 = time.perf_counter()
        clf.fit(X, y)
        fit_s = time.perf_counter() - t0
        train_acc = float((clf.predict(X) == y).mean())
        clf.save(self.path)
        self.classifier = clf
        return {
            "classifier": clf.kind,
            "random_encoder": bool(getattr(clf, "random_encoder", False)),
            "n_epochs": int(len(y)),
            "per_class": {lab: int((y == k).sum()) for k, lab in enumerate(self.labels)},
            "fit_s": round(fit_s, 3),
            "train_accuracy": round(train_acc, 4),
            "file": str(DECODER_FILE),
        }

    def _load(self) -> None:
        from models.classifiers import load_classifier

        self.classifier = load_classifier(self.path)

    def _window(self, epoch: EpochData) -> np.ndarray:
        """The decoding window of the decoder's channels (``decoder.channels``)."""
        from models.classifiers import ClassifierError, crop_window, pick_channels

        s = self.settings
        try:
            x = crop_window(epoch.data, epoch.sfreq, epoch.tmin, tuple(s.window_s))
            return pick_channels(x, list(epoch.ch_names), s.channels)[0]
        except ClassifierError as err:
            raise RewardError(str(err)) from None

    def __call__(self, epoch: EpochData) -> Reward:
        """The decoder's probability of the target class."""
        if self.classifier is None:
            raise DecoderNotReady("the calibration decoder is not fitted yet")
        x = self._window(epoch)[None].astype(np.float32)
        proba = self.classifier.predict_proba(x)[0]
        return Reward(
            float(proba[self.column]),
            {"proba": {n: round(float(p), 6) for n, p in zip(self.labels, proba, strict=True)}},
        )
