"""Decoder figures: calibration fit time, scoring latency, CLIP retrieval, brain-model F1.

- calibration_fit_s: time to fit each classifier (protocol settings) on 100 epochs of
  17 x 250 simulated by the brain model (ATM channels, 250 Hz, baseline-corrected);
  calibration_fit_s_by_channels gives it for the decoders' own channels too.
- score_ms: predict_proba on one epoch, median (and p95) of --score-repeats calls.
- synthetic_retrieval_top1_200way: `eegs train-encoder --synthetic` run in-process
  (1000 training images x 4 repetitions of 17 x 250, each EEG trial a noisy linear
  function of its 1024-d embedding, per-sample SNR --retrieval-snr) within a
  wall-clock budget; top-1 on 200 held-out images, repetitions averaged (chance 0.5 %).
- brain_model_f1_avg: 100 procedural images labelled by the brain model's hidden
  (oracle) valence, one epoch each, stratified k-fold repeated with seeds; macro F1
  (mean of F1-Amuse and F1-Sad) over folds. The decoders read the protocol's
  decoder.channels: by default every channel of the brain model's 64-channel montage,
  as the loop's calibration decoder does; brain_model_f1.by_channels also gives the
  figure on the 17 occipito-parietal ATM-S channels alone (--no-17ch skips it).
  --labels says how the images are labelled:
  "extremes" (default) builds the set like a labelled affective set (ArtPhoto, EmoSet),
  whose images were chosen because they clearly evoke one emotion: of --pool candidate
  images the 50 of highest valence are amusement and the 50 of lowest sadness.
  "median" splits 100 images at their median valence, so most lie near neutral.
  The headline figure uses --labels; brain_model_f1.by_labelling gives both (first SNR).

ATM-S-FC uses a randomly initialised frozen encoder unless the protocol (or --encoder)
names a checkpoint: it is then a random-feature model (no pretrained ATM-S weights
ship). `eegs train-encoder --brain-model SUBJECT...` pretrains one on other simulated
subjects, the stand-in for the poster's THINGS-EEG2-pretrained encoder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("atms_fc", "eegnet")
LABELLINGS = ("extremes", "median")
"""How the calibration images are labelled (see :func:`brain_model_set`)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("--protocol", type=Path, default=None, metavar="FILE", help="protocol file")
    p.add_argument(
        "--encoder",
        type=Path,
        metavar="FILE",
        help="ATM-S checkpoint for ATM-S-FC (decoder.encoder_checkpoint), e.g. one made by "
        "`eegs train-encoder --brain-model` on other simulated subjects",
    )
    p.add_argument(
        "--snr",
        type=float,
        nargs="+",
        default=None,
        help="brain-model SNR(s) for the F1 figure (default: the model's)",
    )
    p.add_argument("--subject", type=int, default=0, help="brain-model subject seed")
    p.add_argument("--n-epochs", type=int, default=100, help="calibration epochs")
    p.add_argument(
        "--labels",
        choices=LABELLINGS,
        default="extremes",
        help="labelling of the F1 set: valence extremes of --pool images (as a labelled "
        "affective set is built) or a median split of --n-epochs images",
    )
    p.add_argument("--pool", type=int, default=300, help="candidate images for --labels extremes")
    p.add_argument(
        "--single-labelling",
        action="store_true",
        help="measure F1 only with --labels (skip the other labelling's figure)",
    )
    p.add_argument("--folds", type=int, default=None, help="decoder.evaluation.folds")
    p.add_argument("--seeds", default=None, help="comma-separated (decoder.evaluation.seeds)")
    p.add_argument(
        "--train-epochs",
        type=int,
        default=None,
        help="passes of both classifiers (default: the protocol's)",
    )
    p.add_argument("--score-repeats", type=int, default=200)
    p.add_argument("--retrieval-minutes", type=float, default=5.0, help="CPU budget")
    p.add_argument("--retrieval-snr", type=float, default=0.002)
    p.add_argument("--retrieval-epochs", type=int, default=30, help="upper bound on epochs")
    p.add_argument("--skip-retrieval", action="store_true")
    p.add_argument("--skip-f1", action="store_true")
    p.add_argument(
        "--no-17ch",
        action="store_true",
        help="skip the F1 figure on the 17 ATM-S channels (when the decoders read others)",
    )


def brain_model_set(
    n: int,
    subject: int,
    snr: float | None,
    seed: int = 0,
    *,
    labels: str = "extremes",
    pool: int = 300,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(X (n, 64, 250) µV, y, info): n labelled procedural images, one epoch each.

    ``labels="extremes"`` builds the set the way a labelled affective set (ArtPhoto,
    EmoSet) is built: images are picked because they clearly evoke one emotion, so of
    ``pool`` candidate images the n/2 of highest oracle valence are amusement (1) and
    the n/2 of lowest are sadness (0). ``labels="median"`` renders n images and splits
    them at the median valence: most lie near neutral, a much harder, less realistic set.
    The epochs are simulated on the brain model's 64 channels (``info["ch_names"]``)
    in a shuffled presentation order and baseline-corrected.
    """
    from models.brain.pairs import decoder_epochs, procedural_images
    from models.brain.response import DEFAULT_SNR, BrainModel

    if labels not in LABELLINGS:
        raise ValueError(f"labels must be one of {LABELLINGS}; got {labels!r}")
    n_draw = n if labels == "median" else max(int(pool), n)
    snr = DEFAULT_SNR if snr is None else snr
    rng = np.random.default_rng([subject, seed])
    images = procedural_images(n_draw, rng)
    model = BrainModel(subject, sfreq=250.0, snr=snr)
    valence = np.array([model.affect(im)[0] for im in images])
    order = np.argsort(valence, kind="stable")
    if labels == "median":
        chosen = np.arange(n)
        y = np.zeros(n, int)
        y[order[n // 2 :]] = 1  # top half = amusement (1)
        desc = "oracle valence, median split of the images: top half = amusement"
    else:
        n_sad = n // 2
        chosen = np.concatenate([order[:n_sad], order[n_draw - (n - n_sad) :]])
        y = np.r_[np.zeros(n_sad, int), np.ones(n - n_sad, int)]
        shuffle = rng.permutation(n)  # presentation order
        chosen, y = chosen[shuffle], y[shuffle]
        desc = (
            f"oracle valence extremes of a pool of {n_draw} images: "
            f"{n - n_sad} highest = amusement, {n_sad} lowest = sadness"
        )
    X = decoder_epochs(model, [images[i] for i in chosen], seed)
    v = valence[chosen]
    info = {
        "subject": subject,
        "snr": snr,
        "ch_names": list(model.ch_names),
        "sfreq": 250.0,
        "n_epochs": n,
        "labelling": labels,
        "pool": n_draw,
        "labels": desc,
        "valence_mean": {
            "sadness": round(float(v[y == 0].mean()), 4),
            "amusement": round(float(v[y == 1].mean()), 4),
        },
        "sadness_max_valence": round(float(v[y == 0].max()), 4),
        "amusement_min_valence": round(float(v[y == 1].min()), 4),
        "pool_median_valence": round(float(np.median(valence)), 4),
    }
    return X, y, info


def _timings(X, y, settings, repeats: int) -> tuple[dict, dict, dict]:
    from models.decoders.classifiers import make_classifier

    fit_s, score_med, score_p95 = {}, {}, {}
    for kind in KINDS:
        clf = make_classifier(kind, X.shape[1], X.shape[2], 250.0, settings, seed=0)
        t0 = time.perf_counter()
        clf.fit(X, y)
        fit_s[kind] = round(time.perf_counter() - t0, 3)
        one = X[:1]
        for _ in range(10):
            clf.predict_proba(one)
        times = []
        for i in range(repeats):
            epoch = X[i % len(X)][None]
            t0 = time.perf_counter()
            clf.predict_proba(epoch)
            times.append((time.perf_counter() - t0) * 1e3)
        score_med[kind] = round(float(np.median(times)), 3)
        score_p95[kind] = round(float(np.percentile(times, 95)), 3)
    return fit_s, score_med, score_p95


def _f1(X, y, decoder, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    from app.evaluation.cross_validation import LabelledEpochs, cross_validate

    data = LabelledEpochs(X, y, np.full(len(y), "sim"), 250.0, None)
    recs = cross_validate(data, list(kinds), decoder, dataset="brain-model")
    out = {}
    for kind in kinds:
        v = np.array([r["f1_avg"] for r in recs if r["classifier"] == kind])
        out[kind] = {
            "mean": round(float(v.mean()), 4),
            "sd": round(float(v.std(ddof=1)), 4),
            "n_folds": len(v),
        }
    return out


def _retrieval(args, training) -> dict[str, Any]:
    from app.training import train_encoder
    from models.decoders.clip_training import synthetic_pairs

    train = synthetic_pairs(1000, 4, snr=args.retrieval_snr, seed=1)
    test = synthetic_pairs(200, 4, snr=args.retrieval_snr, seed=2)
    with (
        tempfile.TemporaryDirectory(prefix="eegs-bench-clip-") as tmp,
        contextlib.redirect_stdout(sys.stderr),  # stdout carries only the JSON
    ):
        summary = train_encoder(
            train,
            test,
            training,
            Path(tmp),
            epochs=args.retrieval_epochs,
            device="cpu",
            max_seconds=args.retrieval_minutes * 60,
            progress=False,
        )
        history = json.loads((Path(tmp) / "history.json").read_text())["history"]
    curve = [
        {
            "epoch": h["epoch"],
            "elapsed_s": h["elapsed_s"],
            "top1": h["retrieval"]["200way"]["top1"],
            "top5": h["retrieval"]["200way"]["top5"],
        }
        for h in history
    ]
    reached = next((c["elapsed_s"] for c in curve if c["top1"] >= 0.2), None)
    budget = args.retrieval_minutes * 60
    # the figure is the last epoch finished inside the budget (an epoch slowed by other
    # load on the machine can end after it; it is reported separately)
    within = [c for c in curve if c["elapsed_s"] <= budget] or curve[:1]
    return {
        "top1": within[-1]["top1"],
        "top5": within[-1]["top5"],
        "chance_top1": 1 / 200,
        "epochs": within[-1]["epoch"],
        "elapsed_s": within[-1]["elapsed_s"],
        "final": curve[-1],
        "wall_s": summary["seconds_this_run"],
        "budget_s": budget,
        "first_reached_20pct_at_s": reached,
        "train": "1000 images x 4 repetitions, 17 ch x 250 samples, 1024-d embeddings",
        "snr_per_sample": args.retrieval_snr,
        "curve": curve,
    }


def run(args: argparse.Namespace) -> dict:
    """Measure every figure and return them."""
    import torch

    from experiment_protocols import load_protocol
    from models.brain.response import DEFAULT_SNR
    from models.decoders.classifiers import pick_channels
    from models.montage import ATM_CHANNELS

    protocol = load_protocol(args.protocol)
    dec = protocol.decoder
    if args.folds is not None:
        dec.evaluation.folds = args.folds
    if args.seeds:
        dec.evaluation.seeds = [int(s) for s in args.seeds.split(",")]
    if args.train_epochs is not None:
        dec.atms_fc.epochs = dec.eegnet.epochs = args.train_epochs
    if args.encoder is not None:
        dec.encoder_checkpoint = str(args.encoder)
    if dec.threads:
        torch.set_num_threads(dec.threads)
    snrs = args.snr or [DEFAULT_SNR]
    result: dict[str, Any] = {
        "benchmark": "decoders",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "encoder": dec.encoder_checkpoint or "random-init (ATM-S-FC is a random-feature model)",
    }

    def sets(labels: str, snr: float) -> tuple[dict[str, tuple], dict[str, Any]]:
        """The decoders' view and the 17-channel view of one simulated set."""
        n, subject, pool = args.n_epochs, args.subject, args.pool
        X, y, info = brain_model_set(n, subject, snr, labels=labels, pool=pool)
        names = info.pop("ch_names")
        views = {"decoder": (pick_channels(X, names, dec.channels)[0], y)}
        views["atm17"] = (pick_channels(X, names, ATM_CHANNELS)[0], y)
        return views, info

    views, info = sets(args.labels, snrs[0])
    n_channels = views["decoder"][0].shape[1]
    info["decoder_channels"] = n_channels
    # an encoder checkpoint is made for the decoders' channels; the 17-channel figures
    # then use a random-init encoder of that shape (the timing does not depend on weights)
    decoders = {
        "decoder": dec,
        "atm17": dec
        if n_channels == len(ATM_CHANNELS)
        else dec.model_copy(update={"encoder_checkpoint": ""}),
    }
    fit_by, score_by, p95_by = {}, {}, {}
    for name, (X, y) in views.items():
        key = str(X.shape[1])
        settings = decoders[name].model_dump()
        fit_by[key], score_by[key], p95_by[key] = _timings(X, y, settings, args.score_repeats)
    n17 = str(len(ATM_CHANNELS))
    result.update(
        calibration_fit_s=fit_by[n17],
        score_ms=score_by[n17],
        score_ms_p95=p95_by[n17],
        calibration_fit_s_by_channels=fit_by,
        score_ms_by_channels=score_by,
        calibration_data=info,
    )
    if not args.skip_retrieval:
        ret = _retrieval(args, dec.encoder_training)
        result["synthetic_retrieval_top1_200way"] = ret["top1"]
        result["synthetic_retrieval"] = ret
    if not args.skip_f1:
        by_snr = {str(snrs[0]): _f1(*views["decoder"], dec)}
        for snr in snrs[1:]:
            by_snr[str(snr)] = _f1(*sets(args.labels, snr)[0]["decoder"], dec)
        first = by_snr[str(snrs[0])]
        by_labelling = {args.labels: {"data": info, "f1": first}}
        if not args.single_labelling:
            for other in LABELLINGS:
                if other != args.labels:
                    other_views, other_info = sets(other, snrs[0])
                    f1 = _f1(*other_views["decoder"], dec)
                    by_labelling[other] = {"data": other_info, "f1": f1}
        by_channels = {str(n_channels): (first, dec)}
        if not args.no_17ch and n_channels != len(ATM_CHANNELS):
            by_channels[n17] = (_f1(*views["atm17"], decoders["atm17"]), decoders["atm17"])
        result["brain_model_f1_avg"] = {k: first[k]["mean"] for k in KINDS}
        result["brain_model_f1"] = {
            "labelling": args.labels,
            "subject": args.subject,
            "channels": list(dec.channels) or f"all {n_channels}",
            "snr": by_snr,
            "by_labelling": {
                lab: {
                    "snr": snrs[0],
                    "f1_avg": {k: v["f1"][k]["mean"] for k in KINDS},
                    "f1": v["f1"],
                    "labels": v["data"]["labels"],
                    "valence_mean": v["data"]["valence_mean"],
                }
                for lab, v in by_labelling.items()
            },
            "by_channels": {
                n: {
                    "f1_avg": {k: v[k]["mean"] for k in KINDS},
                    "f1": v,
                    "atms_encoder": d.encoder_checkpoint or "random-init",
                }
                for n, (v, d) in by_channels.items()
            },
            "protocol": f"stratified {dec.evaluation.folds}-fold x seeds {dec.evaluation.seeds}",
            "default_snr": DEFAULT_SNR,
        }
    return result
