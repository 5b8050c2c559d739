"""The personal estimator beside textbook decoders, on real recordings and on the brain model.

For each participant and calibration size (48, 96, 200, 400 trials where there are
enough), ``--draws`` random calibration blocks are drawn from the participant's trials
and every estimator is cross-validated inside each block on the same folds
(:mod:`models.decoders.decodability`): the session's ``personal`` estimator (the
protocol's ``personal_*`` settings) and the anchors ``lda``, ``xdawn_ts`` and ``faa``
(:mod:`models.decoders.anchors`). Per participant, size and estimator: the
out-of-fold r and AUC (mean, 95 % t-interval over draws), the share of draws that
decode by the session's rule (r > 0 and p < ``p_threshold``; the personal
estimator's p is its own permutation test, the anchors' the analytic p of r), and the
false-positive rate: the same draws with the ratings permuted, the share that decode.

Participants (:mod:`workers.labelled_epochs`):

- real recordings of labelled events (``--real``: one participant per sub-folder; by
  default the shipped eeg-notebooks faces/houses Muse recordings, faces rated 7 and
  houses 3), preprocessed 0.5-30 Hz, epochs -0.2 to 1.0 s, peak-to-peak > 150 µV dropped;
- MNE Epochs files with a numeric metadata column of ratings (``--epochs FILE
  --rating-column NAME``): a lab's own past recordings;
- one simulated participant per brain-model family (``--families``), rating the pilot's
  calibration images as ``eegs bench loop`` calibrates (``--sim-trials`` trials).

Also measured: the personal estimator's fit time on 200 trials x 64 channels and its
scoring time per epoch (goals: 10 s on 2 cores, 10 ms). The JSON's ``goals`` compare the
personal estimator with the best anchor (mean r within 0.02) and its false-positive
rate with 7 %, per participant and size (``weak`` excepted from the first). A plot of
the mean r per size is written beside the JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from app.bench._kept import KeptParticipants
from app.bench._progress import report
from app.bench._stats import stats
from experiment_protocols.brain_model import SUBJECT_FAMILIES

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REAL = REPO.parent / "shared" / "data" / "real" / "eeg-notebooks-n170"
FAMILIES = tuple(SUBJECT_FAMILIES)  # every registered brain-model family
ESTIMATORS = ("personal", "lda", "xdawn_ts", "faa")
SIZES = (48, 96, 200, 400)
GOALS = {"r_vs_best_anchor": -0.02, "false_positive_rate_max": 0.07, "fit_s_max": 10.0,
         "score_ms_max": 10.0}  # fmt: skip
P_RULES = {
    "personal": "permutation: the estimator's own test (its permutations shuffles "
    "of the ratings, the whole fit repeated on each)",
    "anchors": "analytic: one-sided p of the out-of-fold Pearson r (t, n - 2 df)",
}


def add_real_arguments(p: argparse.ArgumentParser) -> None:
    """Declare ``--real`` and ``--label-ratings`` (this bench's and ``eegs bench realism``'s)."""
    p.add_argument(
        "--real",
        default=str(DEFAULT_REAL),
        metavar="DIR",
        help="folder of real recordings, one participant per sub-folder (any file eegs "
        "replay reads; '' for none; default: the shipped eeg-notebooks faces/houses)",
    )
    p.add_argument(
        "--label-ratings",
        default="face=7,house=3",
        metavar="LABEL=R,...",
        help="the rating each event label of --real stands for",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    add_real_arguments(p)
    p.add_argument("--families", default=",".join(FAMILIES), help="brain-model families ('')")
    p.add_argument("--first-subject", type=int, default=1000, help="subject seed of family 1")
    p.add_argument("--sim-trials", type=int, default=480, help="trials per simulated participant")
    p.add_argument(
        "--epochs",
        action="append",
        default=[],
        metavar="FILE",
        help="an MNE Epochs file (-epo.fif) with a metadata column of ratings (repeatable)",
    )
    p.add_argument("--rating-column", default=None, metavar="NAME", help="that column")
    p.add_argument("--participants", default="", help="comma list: only these participants (names)")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="calibration sizes")
    p.add_argument("--draws", type=int, default=20, help="random draws per size")
    p.add_argument("--estimators", default=",".join(ESTIMATORS), help=f"comma list of {ESTIMATORS}")
    p.add_argument("--protocol", default=None, metavar="FILE", help="default: pilot.toml")
    p.add_argument("--workers", type=int, default=1, help="participants run in parallel")
    p.add_argument("--seed", type=int, default=0, help="seeds the draws, folds, permutations")
    p.add_argument("--no-null", action="store_true", help="skip the permuted-rating draws")
    p.add_argument("--no-timing", action="store_true", help="skip the 200 x 64 fit timing")
    p.add_argument("--plot", type=Path, default=None, help="PNG (default: beside --out)")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def label_ratings(text: str) -> dict[str, float]:
    """``face=7,house=3`` as a mapping."""
    from workers.errors import InputError

    out = {}
    for item in _csv(text):
        label, sep, value = item.partition("=")
        try:
            out[label.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not label.strip():
            raise InputError(f"--label-ratings: {item!r} is not LABEL=NUMBER")
    if len(set(out.values())) < 2:
        raise InputError(f"--label-ratings {text!r}: needs two labels with different ratings")
    return out


# -- participants --------------------------------------------------------------------------------
def real_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One participant per sub-folder of ``--real`` (the folder itself if it has none)."""
    from workers.errors import InputError

    if not args.real:
        return []
    root = Path(args.real)
    if not root.is_dir():
        raise InputError(f"--real {root}: no such folder")
    ratings = label_ratings(args.label_ratings)
    return [{"kind": "recording", "path": str(sub), "dataset": root.name,
             "participant": sub.name, "ratings": ratings}
            for sub in sorted(p for p in root.iterdir() if p.is_dir()) or [root]]  # fmt: skip


def participant_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """What each participant is (loaded or simulated in the process that runs it)."""
    from workers.errors import InputError
    from workers.labelled_epochs import epochs_file_participant

    specs = real_specs(args)
    if args.epochs and not args.rating_column:
        raise InputError("--epochs needs --rating-column NAME (the metadata column of ratings)")
    for path in args.epochs:
        name = epochs_file_participant(path)
        specs.append({"kind": "epochs", "path": path, "column": args.rating_column,
                      "dataset": "epochs-file", "participant": name})  # fmt: skip
    families = _csv(args.families)
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise InputError(f"unknown family {bad}; expected some of {FAMILIES}")
    for i, fam in enumerate(families):
        specs.append({"kind": "brain-model", "family": fam, "subject": args.first_subject + i,
                      "dataset": "brain-model", "participant": fam})  # fmt: skip
    only = set(_csv(args.participants))
    if only:
        specs = [s for s in specs if s["participant"] in only]
    if not specs:
        raise InputError("no participant to run (see --real, --families, --epochs, --participants)")
    return specs


def load_participant(spec: dict[str, Any], protocol, images):
    """The participant's :class:`~workers.labelled_epochs.LabelledEpochs`."""
    from workers.labelled_epochs import (
        read_epochs_file,
        read_labelled_recording,
        simulate_participant,
    )

    if spec["kind"] == "recording":
        return read_labelled_recording(
            spec["path"], spec["ratings"], dataset=spec["dataset"], participant=spec["participant"]
        )
    if spec["kind"] == "epochs":
        return read_epochs_file(spec["path"], spec["column"], participant=spec["participant"])
    return simulate_participant(protocol, spec["family"], spec["subject"], images)


def run_participant(job: dict[str, Any]) -> dict[str, Any]:
    """Every size and draw of one participant (in a worker process or in this one)."""
    from threadpoolctl import threadpool_limits

    from experiment_protocols import load_protocol
    from models.decoders.decodability import default_estimators, participant_draws

    t0 = time.perf_counter()
    protocol = load_protocol(job["protocol"])
    with threadpool_limits(1):
        part = load_participant(job["spec"], protocol, job["images"])
        s = protocol.generation.reward
        estimators = default_estimators(
            job["estimators"],
            folds=s.folds,
            permutations=s.permutations,
            p_threshold=s.p_threshold,
            min_trials=s.min_trials,
        )
        name = f"{part.dataset}/{part.participant}"
        sizes = [n for n in job["sizes"] if n <= len(part)]
        total = len(sizes) * job["draws"]

        def progress(n: int, done: int) -> None:
            k = sizes.index(n) * job["draws"] + done
            if done == job["draws"] or k == 1:
                report("estimator", k, total, f"draws of {name} ({n} trials)", t0)

        rows = participant_draws(
            part.data, part.ratings, part.ch_names, part.sfreq, part.tmin, part.scale,
            sizes, job["draws"], estimators, folds=s.folds,
            p_threshold=s.p_threshold, seed=job["seed"], null=job["null"],
            progress=progress,
        )  # fmt: skip
    details = {k: v for k, v in part.details.items() if k != "hidden_valence"}
    return {
        "dataset": part.dataset,
        "participant": part.participant,
        "n_trials_available": len(part),
        "n_channels": len(part.ch_names),
        "sfreq": part.sfreq,
        "rating_sd": round(float(part.ratings.std()), 4),
        "details": details,
        "rows": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


# -- figures -----------------------------------------------------------------------------------
def summarise(participant: dict[str, Any]) -> list[dict[str, Any]]:
    """One result row per (size, estimator) of one participant."""
    out = []
    rows = participant["rows"]
    keys = sorted({(r["n_trials"], r["estimator"]) for r in rows}, key=lambda k: k[0])
    order = {e: i for i, e in enumerate(dict.fromkeys(r["estimator"] for r in rows))}
    for n, est in sorted(keys, key=lambda k: (k[0], order[k[1]])):
        real = [r for r in rows if r["n_trials"] == n and r["estimator"] == est and not r["null"]]
        null = [r for r in rows if r["n_trials"] == n and r["estimator"] == est and r["null"]]
        ok = [r for r in real if "r" in r]
        sr, sa = stats([r["r"] for r in ok]), stats([r["auc"] for r in ok])
        fp = [r["decodes"] for r in null if "r" in r]
        out.append(
            {
                "dataset": participant["dataset"],
                "participant": participant["participant"],
                "n_trials": n,
                "estimator": est,
                "n_draws": len(ok),
                "r_mean": sr["mean"],
                "r_ci95": sr["ci95"],
                "r_sd": sr["sd"],
                "auc_mean": sa["mean"],
                "auc_ci95": sa["ci95"],
                "decode_share": round(float(np.mean([r["decodes"] for r in ok])), 4)
                if ok
                else None,
                "false_positive_rate": round(float(np.mean(fp)), 4) if fp else None,
                "n_null_draws": len(fp),
                "p_rule": ok[0]["p_rule"] if ok else None,
                "seconds_mean": round(float(np.mean([r["seconds"] for r in ok])), 3)
                if ok
                else None,
                "errors": sorted({r["error"] for r in real if "error" in r})[:3] or None,
            }
        )
    return out


def _without_goal(row: dict[str, Any]) -> bool:
    """A brain-model family whose affect is not meant to decode (a weak responder)."""
    from models.brain.families.base import family_class

    return row["dataset"] == "brain-model" and not family_class(row["participant"]).decodable


def goals(results: list[dict[str, Any]], timing: dict[str, Any] | None) -> dict[str, Any]:
    """Per participant and size: personal vs the best anchor, and its false-positive rate."""
    per: dict[str, Any] = {}
    for row in results:
        if row["estimator"] != "personal" or row["r_mean"] is None:
            continue
        anchors = [
            r
            for r in results
            if r["participant"] == row["participant"]
            and r["dataset"] == row["dataset"]
            and r["n_trials"] == row["n_trials"]
            and r["estimator"] != "personal"
            and r["r_mean"] is not None
        ]
        best = max(anchors, key=lambda r: r["r_mean"], default=None)
        key = f"{row['dataset']}/{row['participant']}/{row['n_trials']}"
        fpr = row["false_positive_rate"]
        per[key] = {
            "personal_r": row["r_mean"],
            "best_anchor": None if best is None else best["estimator"],
            "best_anchor_r": None if best is None else best["r_mean"],
            "r_difference": None if best is None else round(row["r_mean"] - best["r_mean"], 4),
            "r_goal_met": None
            if best is None or _without_goal(row)
            else row["r_mean"] >= best["r_mean"] + GOALS["r_vs_best_anchor"],
            "false_positive_rate": fpr,
            "fpr_goal_met": None if fpr is None else fpr <= GOALS["false_positive_rate_max"],
        }
    out: dict[str, Any] = {"per_participant_size": per}
    r_met = [v["r_goal_met"] for v in per.values() if v["r_goal_met"] is not None]
    f_met = [v["fpr_goal_met"] for v in per.values() if v["fpr_goal_met"] is not None]
    out["r_goal_met_everywhere"] = bool(r_met) and all(r_met)
    out["fpr_goal_met_everywhere"] = bool(f_met) and all(f_met)
    out["false_positive_rate_by_size"] = fpr_by_size(results)
    sizes = out["false_positive_rate_by_size"].values()
    out["fpr_goal_met_every_size"] = bool(sizes) and all(v["goal_met"] for v in sizes)
    if timing:
        out["fit_goal_met"] = timing["fit_s"] <= GOALS["fit_s_max"]
        out["score_goal_met"] = timing["score_ms_per_epoch"] <= GOALS["score_ms_max"]
    return out


def fpr_by_size(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The personal estimator's false-positive rate per calibration size, over every participant.

    20 permuted draws cannot tell a cell's 10 % from 5 % (2 of 20 is p = 0.26 at 5 %); the
    draws of one size pooled over participants can. The goal holds on the pooled rate, with
    its exact (Clopper-Pearson) 95 % interval beside it.
    """
    from scipy.stats import binomtest

    out = {}
    for n in sorted({r["n_trials"] for r in results}):
        rows = [r for r in results if r["estimator"] == "personal" and r["n_trials"] == n]
        draws = sum(r["n_null_draws"] for r in rows if r["false_positive_rate"] is not None)
        if not draws:
            continue
        hits = sum(
            round(r["false_positive_rate"] * r["n_null_draws"])
            for r in rows
            if r["false_positive_rate"] is not None
        )
        ci = binomtest(hits, draws).proportion_ci(0.95, method="exact")
        rate = hits / draws
        out[str(n)] = {
            "rate": round(rate, 4),
            "ci95": [round(ci.low, 4), round(ci.high, 4)],
            "decoded": hits,
            "null_draws": draws,
            "goal_met": rate <= GOALS["false_positive_rate_max"],
        }
    return out


def time_personal(settings, n_trials: int = 200, n_channels: int = 64) -> dict[str, Any]:
    """Fit time on ``n_trials`` x ``n_channels`` simulated epochs and scoring time per epoch.

    The brain model's standard subject (1 s at 250 Hz after a 0.2 s baseline); the fit
    runs with the machine's threads as the worker runs it.
    """
    from models.brain.response import BrainModel
    from models.rewards.base import EpochData
    from models.rewards.personal import fit_personal
    from workers.labelled_epochs import simulation_seed

    brain = BrainModel(4242, sfreq=250.0, ch_names=None)
    rng = np.random.default_rng(simulation_seed(4242, "timing"))
    images = list(rng.integers(0, 256, (n_trials, 32, 32, 3), dtype=np.uint8))
    X = brain.simulate_epochs(images, tmin=-0.2, tmax=1.0, seed=1)[:, :n_channels]
    ratings = np.clip(np.round(5 + 2 * rng.standard_normal(n_trials)), 1, 9)
    epochs = [EpochData(x, brain.ch_names[:n_channels], 250.0, -0.2) for x in X]
    t0 = time.perf_counter()
    est = fit_personal(
        epochs,
        ratings,
        (1.0, 9.0),
        0,
        folds=settings.folds,
        permutations=settings.permutations,
        p_threshold=settings.p_threshold,
        min_trials=settings.min_trials,
    )
    fit_s = time.perf_counter() - t0
    names = brain.ch_names[:n_channels]
    fresh = [EpochData(x + 0.01, names, 250.0, -0.2) for x in X[:50]]  # not fitted on
    est(fresh[0])  # first call: imports and caches
    t0 = time.perf_counter()
    for e in fresh:
        est(e)
    score_ms = (time.perf_counter() - t0) / len(fresh) * 1e3
    return {
        "n_trials": n_trials,
        "n_channels": n_channels,
        "n_times": int(X.shape[-1]),
        "permutations": settings.permutations,
        "fit_s": round(fit_s, 3),
        "score_ms_per_epoch": round(score_ms, 3),
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Mean out-of-fold r (95 % CI) per calibration size, one panel per participant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(f"{r['dataset']}/{r['participant']}" for r in results))
    estimators = list(dict.fromkeys(r["estimator"] for r in results))
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for est in estimators:
            pts = [r for r in results if f"{r['dataset']}/{r['participant']}" == name
                   and r["estimator"] == est and r["r_mean"] is not None]  # fmt: skip
            if not pts:
                continue
            xs = [r["n_trials"] for r in pts]
            ms = [r["r_mean"] for r in pts]
            lo = [m - (r["r_ci95"] or [m, m])[0] for m, r in zip(ms, pts, strict=True)]
            hi = [(r["r_ci95"] or [m, m])[1] - m for m, r in zip(ms, pts, strict=True)]
            ax.errorbar(xs, ms, yerr=[lo, hi], marker="o", ms=3, capsize=2, label=est,
                        lw=2 if est == "personal" else 1)  # fmt: skip
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xscale("log")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("calibration trials", fontsize=7)
        ax.set_ylabel("out-of-fold r", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every participant and summarise."""
    from experiment_protocols import load_protocol
    from workers.errors import InputError
    from workers.labelled_epochs import calibration_images

    t0 = time.perf_counter()
    estimators = _csv(args.estimators)
    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad or not estimators:
        raise InputError(f"--estimators {args.estimators!r}: expected some of {ESTIMATORS}")
    try:
        sizes = sorted({int(s) for s in _csv(args.sizes)})
    except ValueError:
        raise InputError(f"--sizes {args.sizes!r}: expected whole numbers") from None
    if not sizes or min(sizes) < 12:
        raise InputError(f"--sizes {args.sizes!r}: each calibration needs at least 12 trials")
    if args.draws < 2:
        raise InputError("--draws must be at least 2 (the 95 % CI needs two)")
    if args.sim_trials < max(sizes) and args.families:
        print(f"[bench estimator] --sim-trials {args.sim_trials} < {max(sizes)}: larger sizes "
              "are skipped for the brain model", file=sys.stderr)  # fmt: skip
    protocol_file = args.protocol or str(REPO / "experiment_protocols" / "pilot.toml")
    protocol = load_protocol(protocol_file)
    specs = participant_specs(args)
    images = None
    if any(s["kind"] == "brain-model" for s in specs):
        print("[bench estimator] rendering the calibration images", file=sys.stderr, flush=True)
        images = calibration_images((args.sim_trials + 1) // 2, seed=args.seed)
    jobs = [
        {"spec": s, "protocol": protocol_file, "images": images if s["kind"] == "brain-model"
         else None, "estimators": estimators, "sizes": sizes, "draws": args.draws,
         "seed": args.seed, "null": not args.no_null}
        for s in specs
    ]  # fmt: skip
    done: list[dict[str, Any]] = []
    with KeptParticipants(args.out) as kept:
        if args.workers > 1:
            with ProcessPoolExecutor(max_workers=args.workers) as pool:
                futures = [pool.submit(run_participant, j) for j in jobs]
                for fut in as_completed(futures):
                    done.append(fut.result())
                    kept.add(done[-1])
        else:
            for j in jobs:
                done.append(run_participant(j))
                kept.add(done[-1])
    order = {(s["dataset"], s["participant"]): i for i, s in enumerate(specs)}
    done.sort(key=lambda p: order.get((p["dataset"], p["participant"]), 0))
    results = [row for p in done for row in summarise(p)]
    timing = None
    if "personal" in estimators and not args.no_timing:
        print("[bench estimator] timing the personal estimator (200 x 64)", file=sys.stderr)
        timing = time_personal(protocol.generation.reward)
    s = protocol.generation.reward
    out = {
        "benchmark": "estimator",
        "protocol": protocol_file,
        "sizes": sizes,
        "draws": args.draws,
        "estimators": estimators,
        "seed": args.seed,
        "decision_rule": f"r > 0 and p < {s.p_threshold:g}",
        "p_rules": P_RULES,
        "false_positive_rate": "the same draws with the ratings permuted: the share that decode"
        if not args.no_null
        else None,
        "personal_settings": {
            "folds": s.folds,
            "permutations": s.permutations,
            "min_trials": s.min_trials,
        },
        "participants": [
            {
                k: p[k]
                for k in (
                    "dataset",
                    "participant",
                    "n_trials_available",
                    "n_channels",
                    "sfreq",
                    "rating_sd",
                    "details",
                    "wall_s",
                )
            }  # fmt: skip
            for p in done
        ],
        "results": results,
        "timing": timing,
        "goals": goals(results, timing),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    path = args.plot or (
        Path(args.out).with_suffix(".png") if args.out else Path("bench-estimator.png")
    )
    plot(results, path)
    out["plot"] = str(path)
    return out
