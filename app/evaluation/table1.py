"""The poster's Table 1, reproduced on the brain model (``eegs reproduce-table1``).

The poster compares emotion decoders (ATM-S-FC, EEGNetv4) trained on EEG recorded while a
subject watched a conventional labelled set (ArtPhoto) and while they watched the
EEGS-generated set. Here the subject is the simulated brain model
(:mod:`models.brain.response`), and for every seed S (one simulated subject each):

1. **EEGS set**: the closed loop runs offline, in-process, for subject S with the pilot
   protocol's settings (``experiment_protocols/pilot.toml``: procedural backend, GP +
   heuristic generator, generation seed S, ``rounds`` rounds of images). Each shown image
   gets an EEG epoch simulated by the brain model, baseline-corrected like
   ``eegs acquire`` does, and its reward is the protocol's reward function on that epoch
   (default: the LPP index). As the live worker does, the calibration block's images
   (normative set) are rewarded and given to the GP before round 0 (LPP reward), or fit
   the decoder (affective reward). The loop never sees the brain model's oracle. As the
   dataset export does (``app/session_outputs.py``), images with a reward at or above
   the median are class 1 (``high_<target>``), the others class 0 (``low_<target>``).
   With ``--sessions``, the images and labels of existing pilot sessions' ``dataset/``
   are used instead (subject = the session's brain-model seed).
2. **Baseline set**: the same number of images from the pilot's normative labelled set
   (:func:`app.pilot.make_labelled_sets`: bright, saturated = amusement, class 1; dark,
   desaturated = sadness, class 0), the stand-in for ArtPhoto. Its images are drawn
   after the calibration block's, so they are never the calibration images.
3. **Recording**: both sets are shown again to the same subject, in a random order, and
   fresh EEG is simulated with new noise seeds (never the loop's epochs: their noise
   made the EEGS labels, reusing it would leak the labels into the test). The epochs
   are saved as ``seed-S/<set>.npz`` (X, y, subject, sfreq, tmin, ch_names, image,
   label_names), which ``eegs evaluate`` reads too. The decoders get the protocol's
   ``decoder.channels`` (every channel of the brain model when empty, the default),
   0-1 s.
4. **Evaluation**: :func:`app.evaluation.cross_validation.cross_validate` (stratified k-fold within
   subject, the protocol's ``decoder`` settings; training epochs and CV seeds set here).
5. **Table**: rows dataset x classifier, F1 of class 1 ("F1-Amuse"), of class 0
   ("F1-Sad") and their mean, mean ± SD over folds and seeds, the per-seed F1-avg and
   the poster's numbers beside them; and a verdict: for each classifier, whether the
   EEGS set's F1-avg beats the baseline's on average over seeds and on most seeds.

What the classes mean differs between the sets and is written in every output: with the
LPP reward the EEGS classes are high vs low *arousal* of that subject's EEG response,
not amusement vs sadness; with ``--reward asymmetry`` they are high vs low frontal
valence index; with ``--reward affective`` a decoder fitted on the
calibration block (normative labels) makes the reward, and the classes are high vs low
decoded amusement. Without an encoder checkpoint, ATM-S-FC uses a randomly initialised
frozen ATM-S encoder (a random-feature model), not the poster's pretrained encoder.
The brain model's oracle is read only after everything, as a check of what the classes
of each set are in the subject's hidden affect.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.evaluation.table1_report import (
    BASELINE,
    EEGS,
    POSTER_TABLE1,
    notes_for,
    table_rows,
    verdict,
    write_csv,
    write_markdown,
)
from experiment_protocols import Protocol

SET_FILES = {BASELINE: "baseline", EEGS: "eegs"}


def say(msg: str) -> None:
    """Progress on stderr (stdout carries only the table)."""
    print(f"[reproduce-table1] {msg}", file=sys.stderr, flush=True)


def checkpoint(*_: Any) -> None:
    """Stop between steps after SIGTERM/SIGINT (:mod:`app.shutdown`): exit status 130."""
    from app.shutdown import STOP

    if STOP.is_set():
        say("stopped on request")
        raise KeyboardInterrupt


@dataclass
class Config:
    """What one ``eegs reproduce-table1`` run does."""

    out: Path
    protocol: Protocol
    seeds: list[int]
    rounds: int
    n_images: int
    kinds: list[str]
    reward: str  # a generation.reward.mode (modes_without_files())
    sessions: list[Path] = field(default_factory=list)


@dataclass
class StimulusSet:
    """Images with binary labels; class names of 0 and 1; details per image."""

    name: str
    images: list[Path]
    y: np.ndarray
    label_names: tuple[str, str]
    details: list[dict[str, Any]] = field(default_factory=list)


def noise_seed(subject: int, *tags: str | int) -> int:
    """A reproducible simulation seed, distinct for every (subject, purpose)."""
    key = zlib.crc32("/".join(map(str, tags)).encode())
    return int(np.random.default_rng([int(subject) & 0xFFFFFFFF, key]).integers(0, 2**31 - 1))


def subject_protocol(base: Protocol, subject: int) -> Protocol:
    """The protocol of one simulated subject, as ``eegs pilot --seed S`` sets it."""
    bm = base.brain_model.model_dump()
    bm["subject_seed"] = subject
    if base.preprocessing.resample_hz:  # simulate at the rate the decoders see
        bm["sfreq"] = base.preprocessing.resample_hz
    gen = base.generation.model_dump()
    gen["seed"] = subject
    return base.with_overrides({"brain_model": bm, "generation": gen})


def closed_loop_shape(protocol: Protocol) -> tuple[int, int]:
    """(rounds, images per round) of the protocol's closed-loop block."""
    for block in protocol.presentation.blocks:
        if block.kind == "closed_loop":
            return block.n_rounds, block.n_trials
    return protocol.generation.heuristic.max_rounds + 1, protocol.generation.heuristic.n_children


def closed_loop_presentations(protocol: Protocol) -> int:
    """Times the closed-loop block shows each of its images (1 without such a block)."""
    return next(
        (b.presentations for b in protocol.presentation.blocks if b.kind == "closed_loop"), 1
    )


def calibration_trials(protocol: Protocol) -> int:
    """Trials of the calibration block (for the affective reward's decoder)."""
    return next((b.n_trials for b in protocol.presentation.blocks if b.kind == "calibration"), 24)


# -- EEG ---------------------------------------------------------------------------------
class Recorder:
    """One simulated subject's EEG, epoched and baseline-corrected like ``eegs acquire``."""

    def __init__(self, protocol: Protocol) -> None:
        from models.decoders.classifiers import channel_picks
        from workers.brain_model import build_model

        self.brain = build_model(protocol.brain_model)
        self.tmin, self.tmax = protocol.epochs.tmin, protocol.epochs.tmax
        self.baseline = protocol.epochs.baseline
        self.sfreq = self.brain.sfreq
        names = list(self.brain.ch_names)
        self.picks = channel_picks(names, protocol.decoder.channels)
        self.decoder_channels = [names[i] for i in self.picks]

    def epochs(self, images: list, seed: int) -> np.ndarray:
        """(n, all channels, times) µV, one continuous simulated stream, baseline removed."""
        X = self.brain.simulate_epochs(images, tmin=self.tmin, tmax=self.tmax, seed=seed)
        if self.baseline is not None:
            lo, hi = self.baseline
            t = self.tmin + np.arange(X.shape[-1]) / self.sfreq
            sel = (t >= lo - 1e-9) & (t <= hi + 1e-9)
            X = X - X[:, :, sel].mean(axis=2, keepdims=True)
        return X.astype(np.float32)

    def decoder_view(self, X: np.ndarray) -> np.ndarray:
        """The channels the decoders get (``decoder.channels``; all when it is empty)."""
        return X[:, self.picks]


def record_set(
    rec: Recorder, stim: StimulusSet, subject: int, seed: int, path: Path, root: Path
) -> dict[str, Any]:
    """Show a set again in a random order, simulate fresh EEG, save it as ``.npz``."""
    order = np.random.default_rng(seed).permutation(len(stim.images))
    images = [stim.images[i] for i in order]
    X = rec.decoder_view(rec.epochs(images, seed))
    np.savez_compressed(
        path,
        X=X,
        y=stim.y[order].astype(np.int64),
        subject=np.full(len(order), f"sim-{subject}"),
        sfreq=np.float64(rec.sfreq),
        tmin=np.float64(rec.tmin),
        ch_names=np.asarray(rec.decoder_channels),
        image=np.asarray([str(p.relative_to(root)) for p in images]),
        label_names=np.asarray(stim.label_names),
        noise_seed=np.int64(seed),
    )
    return {
        "file": str(path.relative_to(root)),
        "n_epochs": len(order),
        "n_class0": int((stim.y == 0).sum()),
        "n_class1": int((stim.y == 1).sum()),
        "noise_seed": seed,
    }


# -- the two stimulus sets -----------------------------------------------------------------
def normative_sets(folder: Path, n_calib: int, n_images: int, subject: int):
    """(calibration, baseline) sets from the pilot's normative rule; class 1 = amusement."""
    from app.pilot import make_labelled_sets

    folders = make_labelled_sets(
        folder, {"calibration": (n_calib + 1) // 2, "baseline": n_images // 2}, subject
    )
    out = []
    for block in ("calibration", "baseline"):
        images, y = [], []
        for label, cls in (("sadness", 0), ("amusement", 1)):
            files = sorted((folders[block] / label).glob("*.png"))
            images += files
            y += [cls] * len(files)
        out.append(StimulusSet(block, images, np.asarray(y), ("sadness", "amusement")))
    return out[0], out[1]


@dataclass
class LoopResult:
    """Every image the offline closed loop showed, with its reward and epoch."""

    images: list  # PIL images
    rewards: np.ndarray
    rounds: np.ndarray
    kinds: list[str]
    epochs: np.ndarray  # (n, decoder channels, times), the loop's own EEG
    noise_seeds: list[int]
    reward_mode: str
    target: str


def round_sizes(n_images: int, rounds: int) -> list[int]:
    """Images per round so that ``rounds`` rounds show ``n_images`` in all."""
    return [n_images // rounds + (1 if r < n_images % rounds else 0) for r in range(rounds)]


def calibration_ratings(protocol: Protocol, rec: Recorder, calib: StimulusSet) -> list[int]:
    """The simulated participant's own valence ratings of the calibration images.

    As in a live session, where the brain model answers the rating screen
    (:mod:`models.brain.ratings`): its hidden valence through its own scale use and noise.
    """
    from models.brain.ratings import RatingModel

    r = protocol.presentation.ratings
    model = RatingModel.draw(protocol.brain_model.subject_seed)
    rng = np.random.default_rng(noise_seed(protocol.brain_model.subject_seed, "ratings"))
    return [model.rate(*rec.brain.affect(path), r.low, r.high, rng)[0] for path in calib.images]


def loop_reward(
    protocol: Protocol, rec: Recorder, calib: StimulusSet, X_calib, folder: Path
) -> tuple[Any, dict[str, Any] | None, tuple[list[Path], np.ndarray] | None]:
    """The protocol's reward for the offline loop, as the live worker has it.

    A reward that fits nothing (or reads a file) as it is; one the worker fits on the
    session (``fitted_on_session``) fitted on the calibration block's epochs, labels and
    the simulated participant's own ratings, as the worker fits it
    (:meth:`workers.generation.personal_fit.SessionFittedReward.offline`; its files in
    ``folder``). Returns the reward, the record the session would log of the fit (None
    if none), and the calibration (images, epochs) to reward and give to the GP before
    round 0, or None where the worker does not reward them (a calibration decoder).
    """
    from models.rewards.base import EpochData, from_settings
    from workers.generation.personal_fit import CalibrationBlock, session_fitted

    settings = protocol.generation.reward
    calibration = (calib.images, X_calib)
    if not settings.fitted_on_session:
        return from_settings(settings), None, calibration
    fitted = session_fitted(settings)
    r = protocol.presentation.ratings
    block = CalibrationBlock(
        [EpochData(x, rec.brain.ch_names, rec.sfreq, rec.tmin) for x in X_calib],
        [calib.label_names[int(y)] for y in calib.y],
        calibration_ratings(protocol, rec, calib),
        (r.low, r.high),
    )
    reward_fn, record = fitted.offline(
        protocol, block, folder, seed=protocol.brain_model.subject_seed
    )
    return reward_fn, record, calibration if fitted.park_kept else None


def run_loop(
    protocol: Protocol,
    rec: Recorder,
    reward_fn,
    sizes: list[int],
    subject: int,
    calibration: tuple[list[Path], np.ndarray] | None = None,
    score=None,
    progress: bool = True,
    backend=None,
    pool=None,
) -> LoopResult:
    """The closed loop offline: generator -> images -> simulated EEG -> reward -> GP.

    ``calibration`` (images, epochs): rewarded and given to the GP before round 0, as the
    live worker credits the calibration block's epochs (LPP reward). ``score(images)``
    (the benchmark's controls: a blind or an oracle reward) replaces the EEG and
    ``reward_fn``: no epochs are simulated. ``backend`` and ``pool`` (default: built from
    the protocol) let several loops of one subject share the costly build. Each image is
    shown the closed-loop block's ``presentations`` times, in the session's order
    (:func:`~app.presentation.images.presentation_order`); its reward and epoch are the
    means over them.
    """
    from PIL import Image

    from app.presentation.images import presentation_order
    from models.heuristic import HeuristicGenerator
    from models.rewards.base import EpochData, as_reward
    from workers.generation.setup import build_backend, build_pool

    g = protocol.generation
    backend = build_backend(protocol) if backend is None else backend
    pool = build_pool(protocol, backend) if pool is None else pool
    gen = HeuristicGenerator(g.heuristic, g.gp, backend, pool, seed=g.seed)
    if calibration is not None:
        paths, X = calibration
        emb = backend.embed([Image.open(p).convert("RGB") for p in paths])
        for path, e, x in zip(paths, emb, X, strict=True):
            value = as_reward(reward_fn(EpochData(x, rec.brain.ch_names, rec.sfreq, rec.tmin)))
            gen.observe(path.stem, e, value.value)
        gen.refit()
    k = closed_loop_presentations(protocol)
    images, rewards, rounds, kinds, epochs, seeds = [], [], [], [], [], []
    for r, n in enumerate(sizes):
        checkpoint()
        batch = gen.next_round(n_images=n)
        seed = noise_seed(subject, "loop", r)
        order = np.asarray(presentation_order(len(batch), k, (g.seed, r)), dtype=int)
        shown = [batch[i].image for i in order]  # each image k times, as the session shows it
        if score is None:
            X = rec.epochs(shown, seed)
            values = [
                as_reward(reward_fn(EpochData(x, rec.brain.ch_names, rec.sfreq, rec.tmin))).value
                for x in X
            ]
            # an image's EEG: its presentations' epochs averaged
            X_mean = np.stack([X[order == j].mean(axis=0) for j in range(len(batch))])
            epochs.append(rec.decoder_view(X_mean))
        else:
            values = [float(v) for v in score(shown)]
        for j, value in zip(order, values, strict=True):
            gen.observe(f"r{r:02d}-{j}", batch[j].embedding, value)  # kept as each image's mean
        values = np.asarray(values)
        for j, c in enumerate(batch):
            images.append(c.image)
            rewards.append(float(values[order == j].mean()))
            rounds.append(r)
            kinds.append(c.kind)
        seeds.append(seed)
        gen.refit()
        if progress:
            say(
                f"seed {subject}: loop round {r + 1}/{len(sizes)}, {len(batch)} images, "
                f"mean reward {np.mean(rewards[-len(batch) :]):.3f}"
            )
    mode, target = g.reward.mode, g.reward.chases
    return LoopResult(
        images,
        np.asarray(rewards),
        np.asarray(rounds),
        kinds,
        np.concatenate(epochs) if epochs else np.empty((0,)),
        seeds,
        mode,
        target,
    )


def eegs_set_from_loop(loop: LoopResult, folder: Path) -> StimulusSet:
    """Median split of the loop's rewards (as the dataset export), images saved as PNG."""
    median = float(np.median(loop.rewards))
    y = (loop.rewards >= median).astype(int)
    names = (f"low_{loop.target}", f"high_{loop.target}")
    paths, details = [], []
    for i, (im, cls) in enumerate(zip(loop.images, y, strict=True)):
        path = folder / names[cls] / f"image-{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path)
        paths.append(path)
        details.append(
            {
                "file_name": str(path.relative_to(folder)),
                "label": names[cls],
                "reward": round(float(loop.rewards[i]), 6),
                "reward_mode": loop.reward_mode,
                "round": int(loop.rounds[i]),
                "kind": loop.kinds[i],
            }
        )
    (folder / "metadata.jsonl").write_text("".join(json.dumps(d) + "\n" for d in details))
    return StimulusSet(EEGS, paths, y, names, details)


def eegs_set_from_session(session: Path) -> tuple[StimulusSet, Protocol, int]:
    """The images and labels of a pilot session's ``dataset/``, and its protocol and subject."""
    from experiment_protocols import load_protocol
    from workers.errors import InputError

    meta = session / "dataset" / "metadata.jsonl"
    if not meta.is_file():
        raise InputError(f"{session}: no dataset/metadata.jsonl (not a finished pilot session)")
    rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
    labels = sorted({r["label"] for r in rows})
    high = [lab for lab in labels if lab.startswith("high_")]
    low = [lab for lab in labels if lab.startswith("low_")]
    if len(high) != 1 or len(low) != 1:
        raise InputError(f"{meta}: expected one high_* and one low_* label, found {labels}")
    ppath = session / "protocol.toml"
    if not ppath.is_file():
        raise InputError(f"{session}: no protocol.toml")
    protocol = load_protocol(ppath)
    images = [session / "dataset" / r["file_name"] for r in rows]
    y = np.asarray([1 if r["label"] == high[0] else 0 for r in rows])
    details = [{k: r.get(k) for k in ("file_name", "label", "reward", "round")} for r in rows]
    stim = StimulusSet(EEGS, images, y, (low[0], high[0]), details)
    return stim, protocol, protocol.brain_model.subject_seed


def copy_set(stim: StimulusSet, folder: Path) -> StimulusSet:
    """The set with its images copied into ``folder/<label>/`` (and a metadata.jsonl)."""
    import shutil

    paths = []
    for i, (src, cls) in enumerate(zip(stim.images, stim.y, strict=True)):
        dest = folder / stim.label_names[cls] / f"image-{i:03d}{src.suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        paths.append(dest)
    details = [
        {**d, "file_name": str(p.relative_to(folder)), "source": str(src)}
        for d, p, src in zip(stim.details, paths, stim.images, strict=True)
    ]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(d) + "\n" for d in details))
    return StimulusSet(stim.name, paths, stim.y, stim.label_names, details)


# -- per subject ---------------------------------------------------------------------------
def oracle_check(rec: Recorder, stim: StimulusSet) -> dict[str, Any]:
    """ORACLE, read after the fact: mean hidden valence/arousal of each class (evaluation)."""
    va = np.asarray([rec.brain.affect(p) for p in stim.images])
    return {
        name: {
            "valence": round(float(va[stim.y == cls, 0].mean()), 4),
            "arousal": round(float(va[stim.y == cls, 1].mean()), 4),
        }
        for cls, name in enumerate(stim.label_names)
    }


def evaluate_file(path: Path, name: str, kinds: list[str], dec, encoder, subject: int) -> list:
    """Cross-validate every classifier on one recorded set (``eegs evaluate``'s code)."""
    from app.evaluation.cross_validation import cross_validate, load_labelled
    from models.decoders.classifiers import DISPLAY_NAMES

    data = load_labelled([path], dec)
    records = []
    for kind in kinds:
        t0 = time.perf_counter()
        recs = cross_validate(data, [kind], dec, dataset=name, encoder=encoder, progress=checkpoint)
        f1 = np.mean([r["f1_avg"] for r in recs])
        say(
            f"seed {subject}: {name} / {DISPLAY_NAMES.get(kind, kind)}: F1-avg {f1:.3f} "
            f"({len(recs)} folds, {time.perf_counter() - t0:.0f} s)"
        )
        records += recs
    return records


def run_subject(cfg: Config, subject: int, session: Path | None, encoder) -> dict[str, Any]:
    """Both sets for one simulated subject: build, record, cross-validate."""
    from workers.errors import InputError

    t0 = time.perf_counter()
    if session is not None:
        eegs, base_protocol, subject = eegs_set_from_session(session)
        protocol = subject_protocol(
            base_protocol.with_overrides({"decoder": cfg.protocol.decoder.model_dump()}), subject
        )
        n_images = len(eegs.images) - len(eegs.images) % 2
        loop = None
    else:
        protocol = subject_protocol(cfg.protocol, subject)
        n_images = cfg.n_images
    d = cfg.out / f"seed-{subject}"
    if d.exists():
        raise InputError(f"{d} exists: seeds (and sessions' subjects) must be distinct")
    d.mkdir(parents=True)
    if session is not None:  # the session's images beside the rest of the subject's files
        eegs = copy_set(eegs, d / "eegs")
    rec = Recorder(protocol)
    calib, baseline = normative_sets(d / "stimuli", calibration_trials(protocol), n_images, subject)
    baseline.name = BASELINE
    info: dict[str, Any] = {"subject_seed": subject, "n_images": n_images}
    if session is None:
        from experiment_protocols.rewards import switch_mode
        from workers.generation.personal_fit import session_fitted

        X_calib = rec.epochs(calib.images, noise_seed(subject, "calibration"))
        protocol.generation.reward = switch_mode(protocol.generation.reward, cfg.reward)
        reward_fn, record, prior = loop_reward(protocol, rec, calib, X_calib, d)
        if record is not None:  # as the session logs it (personal_estimator)
            info[session_fitted(protocol.generation.reward).fit_event] = record
        sizes = round_sizes(n_images, cfg.rounds)
        loop = run_loop(protocol, rec, reward_fn, sizes, subject, prior)
        eegs = eegs_set_from_loop(loop, d / "eegs")
        np.savez_compressed(
            d / "loop.npz",
            X=loop.epochs,
            reward=loop.rewards,
            round=loop.rounds,
            image=np.asarray([str(p.relative_to(cfg.out)) for p in eegs.images]),
            noise_seed=np.asarray(loop.noise_seeds, np.int64),
            sfreq=np.float64(rec.sfreq),
            tmin=np.float64(rec.tmin),
            ch_names=np.asarray(rec.decoder_channels),
        )
        info["loop"] = {
            "file": str((d / "loop.npz").relative_to(cfg.out)),
            "reward_mode": loop.reward_mode,
            "reward_by_round": [
                round(float(loop.rewards[loop.rounds == r].mean()), 4)
                for r in range(int(loop.rounds.max()) + 1)
            ],
            "noise_seeds": loop.noise_seeds,
        }
    else:
        info["session"] = str(session)
    info["classes"] = {BASELINE: list(baseline.label_names), EEGS: list(eegs.label_names)}
    info["recordings"] = {}
    records = []
    dec = cfg.protocol.decoder
    for stim in (baseline, eegs):
        path = d / f"{SET_FILES[stim.name]}.npz"
        seed = noise_seed(subject, "record", SET_FILES[stim.name])
        info["recordings"][stim.name] = record_set(rec, stim, subject, seed, path, cfg.out)
        say(f"seed {subject}: recorded fresh EEG for {stim.name}: {len(stim.images)} epochs")
        records += evaluate_file(path, stim.name, cfg.kinds, dec, encoder, subject)
    info["oracle_check"] = {s.name: oracle_check(rec, s) for s in (baseline, eegs)}
    info["wall_s"] = round(time.perf_counter() - t0, 1)
    return {"info": info, "records": records}


def reproduce(cfg: Config) -> dict[str, Any]:
    """Run every subject, write table1.md/.csv/.json and confusion matrices."""
    import torch

    from app.evaluation.cross_validation import plot_confusions
    from models.decoders.atms import load_atms
    from workers.session_store import atomic_write_json

    t0 = time.perf_counter()
    dec = cfg.protocol.decoder
    dec.evaluation.leave_one_subject_out = False  # each subject's labels are personal
    if dec.threads:
        torch.set_num_threads(dec.threads)
    channels = Recorder(cfg.protocol).decoder_channels
    encoder = None
    if "atms_fc" in cfg.kinds and dec.encoder_checkpoint:
        sfreq = cfg.protocol.preprocessing.resample_hz or cfg.protocol.brain_model.sfreq
        n_times = int(round((dec.window_s[1] - dec.window_s[0]) * sfreq))
        encoder = load_atms(dec.encoder_checkpoint, n_channels=len(channels), n_times=n_times)
    cfg.out.mkdir(parents=True, exist_ok=True)
    jobs = [(s, None) for s in cfg.seeds] if not cfg.sessions else [(0, p) for p in cfg.sessions]
    subjects, records = [], []
    for i, (seed, session) in enumerate(jobs):
        say(f"subject {i + 1}/{len(jobs)}" + (f" ({session})" if session else f" (seed {seed})"))
        checkpoint()
        res = run_subject(cfg, seed, session, encoder)
        subjects.append(res["info"])
        records += res["records"]
    classes = {name: tuple(subjects[0]["classes"][name]) for name in (BASELINE, EEGS)}
    enc_source = next((r["encoder"] for r in records if "encoder" in r), "random-init")
    rows = table_rows(records, classes)
    result: dict[str, Any] = {
        "settings": {
            "seeds": [s["subject_seed"] for s in subjects],
            "n_images": subjects[0]["n_images"],
            "rounds": None if cfg.sessions else cfg.rounds,
            "reward": cfg.reward if not cfg.sessions else "from the sessions",
            "sessions": [str(p) for p in cfg.sessions],
            "classifiers": cfg.kinds,
            "folds": dec.evaluation.folds,
            "cv_seeds": dec.evaluation.seeds,
            "train_epochs": {"atms_fc": dec.atms_fc.epochs, "eegnet": dec.eegnet.epochs},
            "protocol_file": cfg.protocol.source,
            "snr": cfg.protocol.brain_model.snr,
            "atms_encoder": enc_source,
        },
        "classes": {k: {"0": v[0], "1": v[1]} for k, v in classes.items()},
        "poster_table1": {
            d: {
                c: dict(zip(("f1_amuse", "f1_sad", "f1_avg"), v, strict=True))
                for c, v in by.items()
            }
            for d, by in POSTER_TABLE1.items()
        },
        "notes": notes_for(
            cfg.sessions, cfg.rounds, cfg.reward, classes, enc_source, channels, dec.channels
        ),
    }
    train = result["settings"]["train_epochs"]
    result["settings"]["train_epochs"] = (
        train["atms_fc"] if train["atms_fc"] == train["eegnet"] else train
    )
    result["verdict"] = verdict(records, cfg.kinds)
    result["table"] = rows
    result["subjects"] = subjects
    result["folds"] = records
    write_csv(rows, cfg.out / "table1.csv")
    write_markdown(rows, result, cfg.out / "table1.md")
    result["confusion_matrices"] = [
        p.name for p in plot_confusions(records, cfg.out, class_names=classes)
    ]
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(cfg.out / "table1.json", result)
    return result
