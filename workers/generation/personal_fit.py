"""Rewards fitted in the session, on its own calibration block.

Two rewards need the session's calibration block before they can score anything; both
are :class:`SessionFittedReward` objects that the generation worker feeds and fits in a
thread of its own (``GenerationService``): it keeps the calibration epochs (and, for the
personal reward, the ratings), fits as soon as the block is in (or once the calibration
is over without it: :mod:`workers.generation.calibration`), saves the model in
``SESSION/decoder/`` and then scores the epochs that waited.

**Affective decoder** (the affective mode with ``decoder = "calibration"``,
:class:`CalibratedDecoderReward`): the worker keeps every epoch whose
marker carries one of the decoder's two labels (``decoder.positive_label`` /
``negative_label``, the calibration images' classes); it fits ``decoder.classifier``
on them (ATM-S-FC or EEGNet, :mod:`models.decoders.classifiers`), saves it to
``SESSION/decoder/calibration.safetensors`` and from then on rewards each epoch with the
decoder's probability of ``generation.reward.target_class``.

**Personal estimator** (the personal mode, :class:`PersonalSessionReward`): the worker
keeps every epoch of a calibration block (the marker's ``block`` is the label of a block
of kind ``calibration``) and every valence rating of those trials
(:class:`~workers.messages.RatingMessage`, published by ``eegs acquire`` beside the
epochs or sent to the worker's ROUTER; paired by trial id, in either order). When every
calibration trial has its epoch and its rating (or once the calibration is over), it
fits :func:`models.rewards.personal.fit_personal` with the protocol's
``generation.reward`` keys, logs a ``personal_estimator`` record (decodes, cv r, CI, p,
n trials, fallback), saves ``decoder/personal.safetensors`` + ``decoder/personal.json``
and rewards every epoch with the predicted valence, or with the asymmetry index when the
participant does not decode (the documented fallback). The calibration epochs themselves
are then rewarded too (their out-of-fold predictions, or the asymmetry index), so their
images join the generator's observations as with the training-free rewards. A resumed
worker loads the saved estimator, or, before the fit, the ratings it logged
(``calibration_rating`` events). :func:`personal_reward_for` is the same fit without a
session (the population bench).

Each class says which reward settings it fits (``fits``, a class of
:mod:`experiment_protocols.rewards`); defining it registers it, and :func:`session_fitted`
finds the one for a protocol whose reward is ``fitted_on_session``. ``offline`` fits the
same reward on a :class:`CalibrationBlock` without a session (``eegs reproduce-table1``,
``eegs bench loop``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from experiment_protocols import Protocol
from experiment_protocols.rewards.affective import CALIBRATION, AffectiveSettings
from experiment_protocols.rewards.base import RewardSettings
from experiment_protocols.rewards.personal import PersonalSettings
from models.rewards.base import EpochData, Reward, RewardError, RewardFunction

logger = logging.getLogger("eegs.calibration")

DECODER_FILE = Path("decoder") / "calibration.safetensors"
PERSONAL_FILE = Path("decoder") / "personal.safetensors"  # + personal.json
__all__ = [
    "CALIBRATION",
    "CalibratedDecoderReward",
    "CalibrationBlock",
    "DecoderNotReady",
    "PersonalSessionReward",
    "SessionFittedReward",
    "personal_reward_for",
    "session_fitted",
]


@dataclass(frozen=True)
class CalibrationBlock:
    """A calibration block without a session: what an offline fit is given.

    ``labels`` are the images' classes (the markers' ``label``), ``ratings`` the
    participant's valence ratings on ``scale`` (None where nobody rated).
    """

    epochs: Sequence[EpochData]
    labels: Sequence[str]
    ratings: Sequence[float] | None
    scale: tuple[float, float]


class DecoderNotReady(RewardError):
    """An epoch arrived before the calibration decoder was fitted."""


class SessionFittedReward:
    """A reward fitted on the session's calibration block: what the worker calls.

    ``keep`` a calibration epoch (returns the fields of its ``calibration_epoch`` event,
    or None for any other epoch), ``add_rating`` (the personal estimator's ratings),
    ``n_usable`` (calibration trials ready for the fit: the block is complete when this
    reaches its size), ``can_fit``, ``fit`` (returns the ``fit_event`` record), then
    ``__call__`` once ``ready``. With ``park_kept`` the kept epochs also wait for the fit
    and are rewarded after it.
    """

    fit_event = "decoder_fitted"
    park_kept = False
    what = "the calibration decoder"
    fits: ClassVar[type[RewardSettings]]
    registry: ClassVar[dict[str, type[SessionFittedReward]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "fits" in cls.__dict__:
            SessionFittedReward.registry[cls.fits.model_fields["mode"].default] = cls

    @classmethod
    def for_protocol(cls, protocol: Protocol, session_dir: Path) -> SessionFittedReward:
        """The reward of the session in ``session_dir``, before its fit."""
        raise NotImplementedError

    @classmethod
    def offline(
        cls, protocol: Protocol, block: CalibrationBlock, folder: Path, seed: int = 0
    ) -> tuple[RewardFunction, dict[str, Any] | None]:
        """The reward fitted on ``block`` as the worker fits it (its files in ``folder``).

        Returns the reward and the record the session would log (None if it logs none).
        """
        raise NotImplementedError

    @property
    def ready(self) -> bool:
        """Whether epochs can be scored."""
        raise NotImplementedError

    def keep(self, epoch: EpochData, marker: dict[str, Any], trial_id: int, flags) -> dict | None:
        """Keep a calibration epoch for the fit (fields to log), else None."""
        raise NotImplementedError

    def add_rating(self, msg) -> dict[str, Any] | None:
        """Keep a self-report for the fit (fields to log), else None."""
        return None

    def n_usable(self) -> int:
        """Calibration trials the fit can use so far."""
        raise NotImplementedError

    def can_fit(self) -> bool:
        """Whether a fit may start now."""
        raise NotImplementedError

    def fit(self) -> dict[str, Any]:
        """Fit, save and switch to the model; returns what the session log keeps."""
        raise NotImplementedError

    def stop_reason(self) -> str | None:
        """Why the closed loop should not go on with this reward (None: it should)."""
        return None


class CalibratedDecoderReward(SessionFittedReward):
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

    fits = AffectiveSettings

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

    @classmethod
    def for_protocol(cls, protocol: Protocol, session_dir: Path) -> CalibratedDecoderReward:
        """The protocol's ``decoder`` section and ``generation.reward.target_class``."""
        return cls(protocol.decoder, protocol.generation.reward.target_class, session_dir)

    @classmethod
    def offline(
        cls, protocol: Protocol, block: CalibrationBlock, folder: Path, seed: int = 0
    ) -> tuple[CalibratedDecoderReward, None]:
        """Fitted on the block's labelled epochs (one of each class is enough here)."""
        reward = cls(
            protocol.decoder, protocol.generation.reward.target_class, folder, min_per_class=1
        )
        for epoch, label in zip(block.epochs, block.labels, strict=True):
            k = reward.label_of({"label": label})
            if k is not None:
                reward.add(epoch, k)
        reward.fit()
        return reward, None

    @property
    def ready(self) -> bool:
        """Whether epochs can be scored."""
        return self.classifier is not None

    def label_of(self, marker: dict[str, Any]) -> int | None:
        """Class index of a labelled (calibration) epoch's marker, else None."""
        label = marker.get("label")
        return self.labels.index(label) if label in self.labels else None

    def keep(self, epoch: EpochData, marker: dict[str, Any], trial_id: int, flags) -> dict | None:
        """A labelled epoch is kept (its label is logged); any other is not."""
        label = self.label_of(marker)
        if label is None:
            return None
        self.add(epoch, label)
        return {"label": self.labels[label]}

    def n_usable(self) -> int:
        """Labelled epochs kept."""
        return len(self.y)

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
        from models.decoders.classifiers import make_classifier

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
        from models.decoders.classifiers import load_classifier

        self.classifier = load_classifier(self.path)

    def _window(self, epoch: EpochData) -> np.ndarray:
        """The decoding window of the decoder's channels (``decoder.channels``)."""
        from models.decoders.classifiers import ClassifierError, crop_window, pick_channels

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


# -- the personal estimator --------------------------------------------------------------------
def personal_reward_for(
    epochs: Sequence[EpochData],
    ratings: Sequence[float],
    scale: tuple[float, float],
    settings,
    seed: int = 0,
):
    """The personal reward fitted as the worker fits it, without a session.

    ``settings`` is the protocol's ``generation.reward`` section (mode ``personal``: the
    cross-validation keys and the ``fallback`` index). Returns ``(reward_fn, record)``:
    the reward (the estimator, or the asymmetry index when the participant does not
    decode) and the ``personal_estimator`` record (decodes, cv r, CI, p, n trials,
    fallback).
    """
    from models.rewards.personal import PersonalReward, personal_reward

    reward = personal_reward(
        epochs,
        ratings,
        scale,
        PersonalReward.fallback_from_settings(settings),
        seed,
        folds=settings.folds,
        permutations=settings.permutations,
        p_threshold=settings.p_threshold,
        min_trials=settings.min_trials,
    )
    return reward, dict(reward.record)


class PersonalSessionReward(SessionFittedReward):
    """The personal reward of one session: calibration epochs + ratings in, then rewards.

    Parameters
    ----------
    settings
        The protocol's ``generation.reward`` section.
    calibration_blocks
        Labels of the protocol's calibration blocks (the markers' ``block``).
    session_dir
        Where the estimator is saved (and found again by a resumed worker).
    seed
        Seeds the folds and the permutations.
    use_flagged
        Fit on quality-flagged epochs too (``generation.use_flagged_epochs``).
    """

    fit_event = "personal_estimator"
    park_kept = True
    what = "the personal estimator"
    fits = PersonalSettings

    def __init__(
        self,
        settings,
        calibration_blocks: Sequence[str],
        session_dir: Path,
        seed: int = 0,
        use_flagged: bool = False,
    ) -> None:
        from models.rewards.personal import PersonalReward

        self.settings = settings
        self.blocks = set(calibration_blocks)
        self.root = Path(session_dir)
        self.path = self.root / PERSONAL_FILE
        self.seed = seed
        self.use_flagged = use_flagged
        self.fallback = PersonalReward.fallback_from_settings(settings)
        self.epochs: dict[int, tuple[EpochData, bool]] = {}  # trial -> (epoch, flagged)
        self.ratings: dict[int, tuple[float, float, float]] = {}  # trial -> (valence, lo, hi)
        self.reward = None  # a models.rewards.personal.PersonalReward once fitted
        self._lock = threading.Lock()
        if self.path.with_suffix(".json").exists():
            self._load()
        else:
            self._restore_ratings()

    @classmethod
    def for_protocol(cls, protocol: Protocol, session_dir: Path) -> PersonalSessionReward:
        """The protocol's reward settings and calibration blocks, the worker's seed."""
        g = protocol.generation
        return cls(
            g.reward,
            [b.label for b in protocol.presentation.blocks if b.kind == "calibration"],
            session_dir,
            seed=g.seed,
            use_flagged=g.use_flagged_epochs,
        )

    @classmethod
    def offline(
        cls, protocol: Protocol, block: CalibrationBlock, folder: Path, seed: int = 0
    ) -> tuple[RewardFunction, dict[str, Any]]:
        """:func:`personal_reward_for` on the block's epochs and ratings."""
        if block.ratings is None:
            raise RewardError("the personal reward is fitted on ratings; the block has none")
        return personal_reward_for(
            block.epochs, block.ratings, block.scale, protocol.generation.reward, seed=seed
        )

    @property
    def ready(self) -> bool:
        """Whether epochs can be scored (the estimator, or its fallback)."""
        return self.reward is not None

    @property
    def record(self) -> dict[str, Any] | None:
        """The ``personal_estimator`` record once fitted."""
        return None if self.reward is None else dict(self.reward.record)

    def keep(self, epoch: EpochData, marker: dict[str, Any], trial_id: int, flags) -> dict | None:
        """An epoch of a calibration block is kept for the fit; any other is not."""
        block = marker.get("block")
        if block not in self.blocks:
            return None
        with self._lock:
            self.epochs[trial_id] = (epoch, bool(flags))
            rated = trial_id in self.ratings
        return {"block": block, "rated": rated, "flags": list(flags or [])}

    def add_rating(self, msg) -> dict[str, Any] | None:
        """A valence rating of a calibration trial (or of an unnamed block) is kept."""
        if msg.valence is None or (msg.block and msg.block not in self.blocks):
            return None
        lo, hi = (float(v) for v in msg.scale)
        if not hi > lo or not np.isfinite(msg.valence):
            raise RewardError(
                f"rating of trial {msg.trial_id}: scale {[lo, hi]}, valence {msg.valence}"
            )
        item = (float(msg.valence), lo, hi)
        with self._lock:
            if self.ratings.get(msg.trial_id) == item:
                return None  # the same rating again (PUB and ROUTER)
            self.ratings[msg.trial_id] = item
        return {"block": msg.block, "valence": item[0], "scale": [lo, hi]}

    def n_usable(self) -> int:
        """Calibration trials with both their epoch and their rating."""
        with self._lock:
            return len(self.epochs.keys() & self.ratings.keys())

    def can_fit(self) -> bool:
        """Always, until fitted: with too few rated trials the fit is the fallback."""
        return not self.ready

    def fit(self) -> dict[str, Any]:
        """Fit (or fall back), save, switch; returns the ``personal_estimator`` record."""
        from models.rewards.personal import PersonalReward

        with self._lock:
            trials = sorted(self.epochs.keys() & self.ratings.keys())
            used = [t for t in trials if self.use_flagged or not self.epochs[t][1]]
            epochs = [self.epochs[t][0] for t in used]
            rated = [self.ratings[t] for t in used]
            n_epochs, n_ratings = len(self.epochs), len(self.ratings)
        if rated:
            _, lo, hi = rated[0]  # every rating on the first one's scale
            ratings = [lo + (v - a) / (b - a) * (hi - lo) for v, a, b in rated]
            reward, _ = personal_reward_for(
                epochs, ratings, (lo, hi), self.settings, seed=self.seed
            )
        else:
            lo = hi = None
            reward = PersonalReward(
                None,
                self.fallback,
                reason=f"not fitted: no rated calibration trial ({n_epochs} calibration "
                f"epochs, {n_ratings} ratings): does the protocol ask valence ratings "
                "(presentation.ratings)?",
                n_trials=0,
            )
        if not reward.uses_estimator and "index is used" not in reward.record["reason"]:
            reward.record["reason"] += "; the reward is the asymmetry index"
        reward.save(self.path)
        self.reward = reward
        return {
            **reward.record,
            "n_calibration_epochs": n_epochs,
            "n_ratings": n_ratings,
            "n_flagged_left_out": len(trials) - len(used),
            "rating_scale": None if lo is None else [lo, hi],
            "file": str(PERSONAL_FILE),
        }

    def stop_reason(self) -> str | None:
        """Why, with ``when_undecoded`` "stop" or "index_or_stop", the loop should end."""
        from models.rewards.personal import loop_stop_reason

        reward = self.reward
        if reward is None:
            return None
        return loop_stop_reason(reward.record, self.settings.when_undecoded)

    def __call__(self, epoch: EpochData) -> Reward:
        """The predicted valence in [0, 1], or the asymmetry index (the fallback)."""
        reward = self.reward
        if reward is None:
            raise DecoderNotReady("the personal estimator is not fitted yet")
        return reward(epoch)

    def _load(self) -> None:
        from models.rewards.personal import PersonalReward

        self.reward = PersonalReward.load(self.path, self.fallback)

    def _restore_ratings(self) -> None:
        """A worker started again before the fit: every rating the session holds.

        Those the last worker logged, and those the acquisition read from the marker
        stream while no worker listened (a restart during the calibration block): the
        published message is gone, the acquisition's ``marker`` event is not.
        """
        from workers.messages import RATING_EVENT, rating_message
        from workers.session_store import EVENTS_FILE, read_events

        events = self.root / EVENTS_FILE
        if not events.exists():
            return
        for e in read_events(events):
            if e.get("event") == "calibration_rating" and e.get("valence") is not None:
                lo, hi = e["scale"]
                self.ratings[int(e["trial_id"])] = (float(e["valence"]), float(lo), float(hi))
            elif e.get("event") == "marker" and isinstance(e.get("marker"), dict):
                marker = e["marker"]
                if marker.get("event") != RATING_EVENT or "low" not in marker:
                    continue
                msg, _ = rating_message(marker, self.root.name, (0.0, 0.0))
                if msg is not None and msg.trial_id not in self.ratings:
                    try:
                        self.add_rating(msg)
                    except RewardError as err:  # logged when it was first read
                        logger.debug("rating not restored: %s", err)


def session_fitted(settings: RewardSettings) -> type[SessionFittedReward]:
    """The class that fits a reward whose settings are ``fitted_on_session``.

    Raises
    ------
    RewardError
        If no :class:`SessionFittedReward` fits that mode.
    """
    try:
        return SessionFittedReward.registry[settings.mode]
    except KeyError:
        raise RewardError(
            f"reward mode {settings.mode!r} is fitted on the session, but no "
            "SessionFittedReward fits it (workers/generation/personal_fit.py)"
        ) from None
