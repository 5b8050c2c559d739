"""The brain model's single-trial decodability of valence beside real recordings', per realism.

Whether a pilot predicts a session depends on how much of the participant's affect one
trial of EEG carries. This bench measures it the same way on both sides, with the anchors
of ``eegs bench estimator`` (:mod:`models.decoders.anchors`: shrinkage LDA, xDAWN +
tangent space + logistic regression, the frontal alpha asymmetry index) on the same
random calibration draws, folds and scoring (:mod:`models.decoders.decodability`):

- real recordings (``--real``, by default the shipped eeg-notebooks faces/houses Muse
  recordings, faces rated 7 and houses 3: the label is what the participant's EEG is
  asked to tell), read and preprocessed as ``eegs bench estimator`` reads them;
- simulated participants of every brain-model family (``--families``, ``--subjects``
  each) at each realism level (``--realism``, ``brain_model.realism``), shown the pilot's
  calibration images; what is decoded is each image's hidden valence (``--target
  valence``, the participant's own taste with no rating noise, as the real labels have
  none) or the participant's ratings of it (``--target ratings``, what a session fits).

Per participant, calibration size and anchor: the out-of-fold r (and AUC) over
``--draws`` draws. Per realism level, family and size: the mean over the family's
subjects with a 95 % t-interval over subjects, and its best anchor. The real range at a
size spans the real participants' best anchors (their means, and the union of their 95 %
intervals); ``in_real_range`` says, per level, family and size, whether the family's
best anchor lies within that union and not above the best real participant's interval.
A plot beside the JSON: one panel per realism level, each family's best anchor against
the calibration size over the real range.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from app.bench._progress import report
from app.bench._stats import stats
from app.bench.estimator import FAMILIES, add_real_arguments, real_specs, summarise

ANCHOR_NAMES = ("lda", "xdawn_ts", "faa")
SIZES = (48, 96, 200, 400)
#: The sizes at which the realistic level must fall within the real range.
CHECKED_SIZES = (48, 96, 200)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    from experiment_protocols.brain_model import REALISM_LEVELS

    add_real_arguments(p)
    p.add_argument(
        "--realism",
        default=",".join(REALISM_LEVELS),
        metavar="LEVEL,...",
        help="brain_model.realism levels to simulate ('' for none; default: %(default)s)",
    )
    p.add_argument("--families", default=",".join(FAMILIES), help="brain-model families")
    p.add_argument("--subjects", type=int, default=3, help="simulated subjects per family")
    p.add_argument("--first-subject", type=int, default=1000, help="subject seed of the first")
    p.add_argument("--sim-trials", type=int, default=480, help="trials per simulated subject")
    p.add_argument(
        "--target",
        choices=("valence", "ratings"),
        default="valence",
        help="what the brain model's EEG is asked to tell: the hidden valence of each image "
        "(no rating noise, as the real labels) or the subject's ratings",
    )
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="calibration sizes")
    p.add_argument("--draws", type=int, default=10, help="random draws per size")
    p.add_argument(
        "--estimators",
        default=",".join(ANCHOR_NAMES),
        help="comma list of the anchors (and 'personal', the session's own estimator)",
    )
    p.add_argument("--protocol", default=None, metavar="FILE", help="default: pilot.toml")
    p.add_argument("--workers", type=int, default=1, help="participants run in parallel")
    p.add_argument("--seed", type=int, default=0, help="seeds the draws and folds")
    p.add_argument("--plot", type=Path, default=None, help="PNG (default: beside --out)")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# -- one participant (in a worker process) -----------------------------------------------------
def run_participant(job: dict[str, Any]) -> dict[str, Any]:
    """Every size and draw of one participant: the anchors' out-of-fold r and AUC."""
    from threadpoolctl import threadpool_limits

    from experiment_protocols import load_protocol
    from experiment_protocols.brain_model import realism_changes
    from models.decoders.decodability import default_estimators, participant_draws
    from workers.labelled_epochs import read_labelled_recording, simulate_participant

    t0 = time.perf_counter()
    spec = job["spec"]
    protocol = load_protocol(job["protocol"])
    with threadpool_limits(1):
        if spec["kind"] == "recording":
            part = read_labelled_recording(
                spec["path"], spec["ratings"], dataset=spec["dataset"],
                participant=spec["participant"],
            )  # fmt: skip
            target = part.ratings
        else:
            bm = {**protocol.brain_model.model_dump(), **realism_changes(spec["realism"])}
            protocol = protocol.with_overrides({"brain_model": bm})
            part = simulate_participant(protocol, spec["family"], spec["subject"], job["images"])
            hidden = np.asarray(part.details["hidden_valence"], dtype=np.float64)
            target = hidden if job["target"] == "valence" else part.ratings
        s = protocol.generation.reward
        estimators = default_estimators(
            job["estimators"], folds=s.folds, permutations=s.permutations,
            p_threshold=s.p_threshold, min_trials=s.min_trials,
        )  # fmt: skip
        sizes = [n for n in job["sizes"] if n <= len(part)]
        rows = participant_draws(
            part.data, target, part.ch_names, part.sfreq, part.tmin, part.scale, sizes,
            job["draws"], estimators, folds=s.folds, p_threshold=s.p_threshold,
            seed=job["seed"], null=False,
        )  # fmt: skip
    return {
        **{k: spec[k] for k in ("kind", "dataset", "participant")},
        "realism": spec.get("realism"),
        "family": spec.get("family"),
        "subject": spec.get("subject"),
        "n_trials_available": len(part),
        "n_channels": len(part.ch_names),
        "rows": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


# -- figures -----------------------------------------------------------------------------------
def best_anchor(rows: list[dict[str, Any]], n: int) -> dict[str, Any] | None:
    """The row with the highest mean r at size ``n`` (None if none)."""
    at = [r for r in rows if r["n_trials"] == n and r["r_mean"] is not None]
    return max(at, key=lambda r: r["r_mean"], default=None)


def real_range(real: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """Per size, the span of the real participants' best anchors: means and 95 % intervals."""
    out = {}
    for n in sizes:
        best = [b for p in {r["participant"] for r in real}
                if (b := best_anchor([r for r in real if r["participant"] == p], n))]  # fmt: skip
        if not best:
            continue
        cis = [b["r_ci95"] or [b["r_mean"], b["r_mean"]] for b in best]
        out[str(n)] = {
            "participants": len(best),
            "mean_r": [min(b["r_mean"] for b in best), max(b["r_mean"] for b in best)],
            "ci95": [min(c[0] for c in cis), max(c[1] for c in cis)],
            "best_anchors": {b["participant"]: b["estimator"] for b in best},
        }
    return out


def family_figures(done: list[dict[str, Any]], level: str, family: str) -> list[dict[str, Any]]:
    """Per size and anchor: mean r and AUC over the family's subjects (95 % t-interval)."""
    per_subject = {
        p["subject"]: {(r["n_trials"], r["estimator"]): r for r in summarise(p)}
        for p in done
        if p["realism"] == level and p["family"] == family
    }
    keys = {k for rows in per_subject.values() for k in rows}
    order = {e: i for i, e in enumerate(ANCHOR_NAMES)}
    out = []
    for n, est in sorted(keys, key=lambda k: (k[0], order.get(k[1], -1))):
        rows = {s: rows[(n, est)] for s, rows in per_subject.items() if (n, est) in rows}
        sr = stats([r["r_mean"] for r in rows.values()])
        sa = stats([r["auc_mean"] for r in rows.values()])
        out.append({
            "realism": level, "family": family, "n_trials": n, "estimator": est,
            "subjects": sr["n"], "r_mean": sr["mean"], "r_ci95": sr["ci95"], "r_sd": sr["sd"],
            "auc_mean": sa["mean"], "auc_ci95": sa["ci95"],
            "r_by_subject": {str(s): r["r_mean"] for s, r in rows.items()},
        })  # fmt: skip
    return out


def range_checks(
    brain: list[dict[str, Any]], span: dict[str, Any], sizes: list[int]
) -> dict[str, Any]:
    """Per level, family and checked size: the family's best anchor against the real range."""
    out: dict[str, Any] = {}
    for level in dict.fromkeys(r["realism"] for r in brain):
        out[level] = {}
        for fam in dict.fromkeys(r["family"] for r in brain if r["realism"] == level):
            rows = [r for r in brain if r["realism"] == level and r["family"] == fam]
            checks = {}
            for n in sizes:
                best, band = best_anchor(rows, n), span.get(str(n))
                if best is None or band is None:
                    continue
                lo, hi = band["ci95"]
                checks[str(n)] = {
                    "best_anchor": best["estimator"],
                    "r_mean": best["r_mean"],
                    "real_ci95": band["ci95"],
                    "within": lo <= best["r_mean"] <= hi,
                    "above": best["r_mean"] > hi,
                }
            out[level][fam] = {
                "by_size": checks,
                "in_real_range": bool(checks) and all(c["within"] for c in checks.values()),
            }
    return out


def plot(real: list[dict[str, Any]], brain: list[dict[str, Any]], span: dict, path: Path) -> None:
    """One panel per realism level: each family's best anchor by size, over the real range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(dict.fromkeys(r["realism"] for r in brain)) or [None]
    fig, axes = plt.subplots(1, len(levels), figsize=(3.6 * len(levels), 3.2), squeeze=False,
                             sharey=True)  # fmt: skip
    ns = sorted(int(n) for n in span)
    for ax, level in zip(axes[0], levels, strict=True):
        if ns:
            ax.fill_between(ns, [span[str(n)]["ci95"][0] for n in ns],
                            [span[str(n)]["ci95"][1] for n in ns], color="0.85",
                            label="real (95 % CIs)")  # fmt: skip
        for p in dict.fromkeys(r["participant"] for r in real):
            rows = [r for r in real if r["participant"] == p]
            pts = [(n, b["r_mean"]) for n in ns if (b := best_anchor(rows, n))]
            ax.plot(*zip(*pts, strict=True), "k--", lw=1, label=f"real {p}")
        for fam in dict.fromkeys(r["family"] for r in brain if r["realism"] == level):
            rows = [r for r in brain if r["realism"] == level and r["family"] == fam]
            sizes = sorted({r["n_trials"] for r in rows})
            best = [best_anchor(rows, n) for n in sizes]
            ms = [b["r_mean"] for b in best]
            ci = [b["r_ci95"] or [m, m] for m, b in zip(ms, best, strict=True)]
            err = [[m - c[0] for m, c in zip(ms, ci, strict=True)],
                   [c[1] - m for m, c in zip(ms, ci, strict=True)]]  # fmt: skip
            ax.errorbar(sizes, ms, yerr=err, marker="o", ms=3, capsize=2, label=fam)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xscale("log")
        ax.minorticks_off()  # the sizes themselves label the axis
        ax.set_xticks(ns or SIZES, [str(n) for n in ns or SIZES])
        ax.set_title(f"brain model: {level}" if level else "real recordings", fontsize=9)
        ax.set_xlabel("calibration trials", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("best anchor's out-of-fold r", fontsize=8)
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the command -------------------------------------------------------------------------------
def _jobs(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    from experiment_protocols.brain_model import REALISM_LEVELS
    from models.decoders.decodability import default_estimators
    from workers.errors import InputError
    from workers.labelled_epochs import calibration_images

    estimators = _csv(args.estimators)
    try:
        default_estimators(estimators)
    except ValueError as err:
        raise InputError(f"--estimators {args.estimators!r}: {err}") from None
    try:
        sizes = sorted({int(s) for s in _csv(args.sizes)})
    except ValueError:
        raise InputError(f"--sizes {args.sizes!r}: expected whole numbers") from None
    if not sizes or min(sizes) < 12:
        raise InputError(f"--sizes {args.sizes!r}: each calibration needs at least 12 trials")
    if args.draws < 2 or args.subjects < 1:
        raise InputError("--draws must be at least 2 and --subjects at least 1")
    levels, families = _csv(args.realism), _csv(args.families)
    bad = [lv for lv in levels if lv not in REALISM_LEVELS]
    bad += [f for f in families if f not in FAMILIES]
    if bad:
        raise InputError(f"unknown realism or family {bad}: levels {tuple(REALISM_LEVELS)}, "
                         f"families {FAMILIES}")  # fmt: skip
    specs = real_specs(args)
    for level in levels:
        for k, fam in enumerate(families):
            for i in range(args.subjects):
                subject = args.first_subject + k * args.subjects + i
                specs.append({"kind": "brain-model", "dataset": "brain-model", "realism": level,
                              "family": fam, "subject": subject,
                              "participant": f"{level}/{fam}/{subject}"})  # fmt: skip
    if not specs:
        raise InputError("nothing to run (see --real, --realism, --families)")
    images = None
    if any(s["kind"] == "brain-model" for s in specs):
        print("[bench realism] rendering the calibration images", file=sys.stderr, flush=True)
        images = calibration_images((args.sim_trials + 1) // 2, seed=args.seed)
    protocol = args.protocol or str(Path(__file__).parents[2] / "experiment_protocols" /
                                    "pilot.toml")  # fmt: skip
    jobs = [
        {"spec": s, "protocol": protocol, "images": images if s["kind"] == "brain-model" else None,
         "estimators": estimators, "sizes": sizes, "draws": args.draws, "seed": args.seed,
         "target": args.target}
        for s in specs
    ]  # fmt: skip
    return jobs, protocol


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every participant and compare the brain model's curves with the real ones."""
    t0 = time.perf_counter()
    jobs, protocol = _jobs(args)
    done: list[dict[str, Any]] = []

    def finished(res: dict[str, Any]) -> None:
        done.append(res)
        what = f"participants ({res['participant']}, {res['wall_s']:.0f} s)"
        report("realism", len(done), len(jobs), what, t0)

    if args.workers > 1:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            for fut in as_completed([pool.submit(run_participant, j) for j in jobs]):
                finished(fut.result())
    else:
        for job in jobs:
            finished(run_participant(job))
    order = {j["spec"]["participant"]: i for i, j in enumerate(jobs)}
    done.sort(key=lambda p: order[p["participant"]])
    real = [row for p in done if p["kind"] == "recording" for row in summarise(p)]
    brain = [
        row
        for level in dict.fromkeys(p["realism"] for p in done if p["kind"] == "brain-model")
        for fam in dict.fromkeys(p["family"] for p in done if p["realism"] == level)
        for row in family_figures(done, level, fam)
    ]
    sizes = sorted({r["n_trials"] for r in real + brain})
    span = real_range(real, sizes)
    out = {
        "benchmark": "realism",
        "protocol": protocol,
        "target": args.target,
        "sizes": sizes,
        "draws": args.draws,
        "subjects_per_family": args.subjects,
        "seed": args.seed,
        "real": real,
        "real_range": span,
        "brain_model": brain,
        "in_real_range": range_checks(brain, span, [n for n in CHECKED_SIZES if n in sizes]),
        "participants": [{k: v for k, v in p.items() if k != "rows"} for p in done],
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    path = args.plot or (
        Path(args.out).with_suffix(".png") if args.out else Path("bench-realism.png")
    )
    plot(real, brain, span, path)
    out["plot"] = str(path)
    return out
