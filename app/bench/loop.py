"""The closed loop over a population of simulated participants, per reward and subject family.

Each participant is a brain-model subject (seed, ``brain_model.family``) the loop was not
tuned on. Per participant, everything runs offline and faster than real time, with the
session's own code: the pilot protocol's generator (procedural backend, GP, heuristic),
the acquisition's epoching (:class:`app.evaluation.table1.Recorder`) and the worker's rewards.
Calibration: the pilot's labelled calibration images are shown, the participant rates
each one (:mod:`models.brain.ratings`: the brain model answering like a person), and
the personal estimator is fitted on those ratings as the worker fits it. Then, for each
reward, round 0 (the same random pool sample for every reward of a participant) and the
protocol's closed-loop rounds:

- the protocol's reward (pilot.toml's: the estimator fitted on the participant's own
  ratings, or its fallback), fitted on the calibration block as the worker fits it;
- every training-free reward mode (the asymmetry and LPP indices);
- controls: ``random`` (random pool images every round: no loop at all), ``blind`` (a
  reward of pure noise through the same generator: the generator's own drift), and
  ``oracle`` (the hidden valence itself as the reward: the ceiling).
- on request only, ``noisy_oracle``: the oracle's reward plus Gaussian noise of SD
  ``--oracle-noise`` (reward units): a reward exactly as informative as a single-trial
  estimator, with nothing else wrong with it, so that the loop's own loss to reward
  noise is told apart from an estimator's (0.47 gives r = 0.55 with the hidden valence
  of pool images, about the personal estimator's on the LPP family).

Both gains are read from the brain model's oracle after the run, never during it:
(a) mean hidden valence of the last two rounds minus round 0; (b) within the session,
the images the loop chose (children, nearest) minus the random images shown beside them.
Figures per reward and family: n, means with 95 % t-intervals over participants, and the
share of participants whose gain (a) is positive; a plot is written beside the JSON.
Participants run in parallel on Dask: a LocalCluster by default (no service to start),
or a lab's scheduler with ``--address``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.bench._kept import KeptParticipants
from app.bench._progress import report
from app.bench._stats import stats
from app.loop_gains import gain_a_at, loop_gains
from experiment_protocols.rewards import modes_without_files

CONTROLS = ("random", "blind", "oracle")
#: session lengths (closed-loop rounds) the gains are also read at, from one longer run
ROUND_COUNTS = (1, 2, 3, 5, 10, 15, 20, 30, 40, 50, 60, 80, 100)
#: a session whose protocol stops its loop after the calibration (``when_undecoded``) ends
#: after round 1: round 0 is asked for before the session starts, round 1 is the round in
#: flight when the fit says stop (:func:`models.rewards.personal.loop_stop_reason`)
STOPPED_AFTER = 1
_FIT_BUDGET_S = 600.0  # the protocol's bound: no fit of the bench is cut short by time
ON_REQUEST = ("noisy_oracle",)  # diagnostic controls, not in the default run
GOALS = {"gain_a_min": 0.30, "frac_improved_min": 0.85, "vs_controls": 2.0, "vs_oracle": 0.70}
#: at a realistic single-trial signal (``brain_model.realism`` other than ``clean``) the goal of
#: a lab session: a gain (a) a participant would see, above chance, twice the controls'
REALISTIC_GAIN_A_MIN = 0.15


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("--participants", type=int, default=40, help="participants in all")
    p.add_argument(
        "--families",
        default=",".join(default_families()),
        help="comma list of subject families, round robin (default: every family but the "
        "default one, %(default)s)",
    )
    p.add_argument(
        "--rewards",
        default=None,
        help=f"comma list of reward modes ({', '.join(modes_without_files())}) and controls "
        f"{CONTROLS + ON_REQUEST} (default: the protocol's reward, the training-free "
        f"modes and {', '.join(CONTROLS)})",
    )
    p.add_argument(
        "--oracle-noise",
        type=float,
        default=0.47,
        help="SD of the noise noisy_oracle adds to the oracle's reward (reward units, 0-1)",
    )
    p.add_argument(
        "--realism",
        default=None,
        metavar="LEVEL,...",
        help="brain_model.realism of the participants; several levels sweep it, the same "
        "participants at each (default: the protocol's)",
    )
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="sweep a protocol key, the same participants at each value: SECTION.KEY "
        "(generation.gp.noise_min) or a block's key by its kind "
        "(presentation.blocks.calibration.n_trials); values as JSON (a bare word is text). "
        "Several --vary (and --realism) sweep every combination, in the order given",
    )
    p.add_argument("--rounds", type=int, default=None, help="closed-loop rounds after round 0")
    p.add_argument("--first-subject", type=int, default=1000, help="seed of participant 1")
    p.add_argument("--protocol", default=None, metavar="FILE", help="default: pilot.toml")
    p.add_argument("--workers", type=int, default=2, help="local Dask worker processes")
    p.add_argument("--address", default=None, help="a Dask scheduler (tcp://HOST:PORT)")
    p.add_argument("--plot", type=Path, default=None, help="PNG (default: beside --out)")


def default_families() -> tuple[str, ...]:
    """Every registered subject family but the default (the population-average subject)."""
    from experiment_protocols.brain_model import SUBJECT_FAMILIES, BrainModelSettings

    default = BrainModelSettings.model_fields["family"].default
    return tuple(f for f in SUBJECT_FAMILIES if f != default)


def default_rewards(protocol) -> tuple[str, ...]:
    """The protocol's reward, every training-free mode, and the controls."""
    from experiment_protocols.rewards import reward_modes, settings_class

    modes = [protocol.generation.reward.mode]
    modes += [m for m in reward_modes() if settings_class(m).training_free]
    return tuple(dict.fromkeys(modes)) + CONTROLS


@dataclass(frozen=True)
class Variant:
    """One point of a sweep: its name and what it changes in every participant's protocol.

    ``changes`` maps a key's path (:func:`apply_changes`) to its value (``None`` clears
    an optional key); the participant's own settings (subject seed, family) are set
    after, so a variant cannot change who the participant is.
    """

    name: str
    changes: dict[str, Any] = field(default_factory=dict)


def realism_variants(levels: list[str]) -> list[Variant]:
    """A sweep of ``brain_model.realism``, each level with its preset's own numbers."""
    from experiment_protocols.brain_model import realism_changes

    return [
        Variant(level, {f"brain_model.{k}": v for k, v in realism_changes(level).items()})
        for level in levels
    ]


def vary_variants(text: str) -> list[Variant]:
    """``KEY=V1,V2,...`` (``--vary``) as one variant per value, named ``KEY=V``.

    Values are read as JSON (``96``, ``0.01``, ``true``); anything else is text.
    """
    import json

    from workers.errors import InputError

    key, sep, values = text.partition("=")
    key = key.strip()
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key or not items:
        raise InputError(f"--vary {text!r}: expected KEY=V1,V2,... (e.g. "
                         "presentation.blocks.calibration.n_trials=48,96,200)")  # fmt: skip

    def value(v: str) -> Any:
        try:
            return json.loads(v)
        except ValueError:
            return v

    short = key.removeprefix("presentation.blocks.")
    return [Variant(f"{short}={v}", {key: value(v)}) for v in items]


def combine(axes: list[list[Variant]]) -> list[Variant]:
    """Every combination of the sweeps' points, the first sweep slowest."""
    out = [Variant("", {})]
    for axis in axes:
        out = [
            Variant(f"{a.name} {b.name}".strip(), {**a.changes, **b.changes})
            for a in out
            for b in axis
        ]
    return out


def apply_changes(protocol, changes: dict[str, Any]):
    """``protocol`` with each key of ``changes`` set (validated).

    A key is a dotted path into the protocol: ``section.key``, a nested table's
    (``generation.gp.noise_min``), or a block's key by the block's kind or position
    (``presentation.blocks.calibration.n_trials``, ``presentation.blocks.0.n_trials``).

    Raises
    ------
    InputError
        If a path names no key of the protocol (the protocol's own error if a value is
        not valid there).
    """
    from workers.errors import InputError

    data = protocol.model_dump()
    for path, value in changes.items():
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = _child(node, part, path)
        if not isinstance(node, dict) or last not in node:
            raise InputError(f"--vary {path}: the protocol has no such key")
        node[last] = value
    return protocol.with_overrides({sec: data[sec] for sec in {p.split(".")[0] for p in changes}})


def _child(node: Any, part: str, path: str) -> Any:
    """One step of :func:`apply_changes`'s path: a table's key, a list's index or kind."""
    from workers.errors import InputError

    if isinstance(node, dict) and part in node:
        return node[part]
    if isinstance(node, list):
        if part.isdigit() and int(part) < len(node):
            return node[int(part)]
        hits = [x for x in node if isinstance(x, dict) and x.get("kind") == part]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise InputError(f"--vary {path}: {len(hits)} blocks of kind {part!r}; use its index")
    raise InputError(f"--vary {path}: the protocol has no {part!r} there")


# -- one participant (runs in a Dask worker) --------------------------------------------------
def run_participant(spec: dict[str, Any]) -> dict[str, Any]:
    """Calibration, then one closed loop per reward, for one simulated participant."""
    import torch
    from threadpoolctl import threadpool_limits

    from app.evaluation.table1 import (
        Recorder,
        calibration_trials,
        loop_reward,
        noise_seed,
        normative_sets,
        run_loop,
        subject_protocol,
    )
    from experiment_protocols import load_protocol
    from experiment_protocols.rewards import switch_mode
    from models.rewards.personal import loop_stop_reason
    from workers.generation.service import build_backend, build_pool

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    subject, family = spec["subject"], spec["family"]
    with threadpool_limits(1), tempfile.TemporaryDirectory(prefix="eegs-loop-") as tmp:
        base = load_protocol(spec["protocol"])
        protocol = apply_changes(subject_protocol(base, subject), spec.get("changes", {}))
        # every GP fit runs its iterations: the live worker's wall-time cap guards the
        # participant's wait, and here would make the figures depend on the machine's load
        protocol = apply_changes(
            protocol,
            {"brain_model.family": family, "generation.gp.refit_budget_s": _FIT_BUDGET_S},
        )
        rec = Recorder(protocol)
        calib, _ = normative_sets(Path(tmp), calibration_trials(protocol), 0, subject)
        X_cal = rec.epochs(calib.images, noise_seed(subject, "calibration"))
        sizes = [spec["round0"]] * (spec["rounds"] + 1)
        out: dict[str, Any] = {
            "subject": subject,
            "family": family,
            "variant": spec.get("variant", ""),
            "realism": protocol.brain_model.realism,
            "by_reward": {},
        }

        def hidden(images) -> np.ndarray:
            return np.asarray([rec.brain.affect(im)[0] for im in images])

        backend = build_backend(protocol)  # built once; each loop runs on its own fork
        pool = build_pool(protocol, backend)

        for reward in spec["rewards"]:
            p = protocol.model_copy(deep=True)
            score, reward_fn, prior, stop = None, None, None, None
            if reward not in CONTROLS + ON_REQUEST:  # a reward mode, on the EEG
                p.generation.reward = switch_mode(p.generation.reward, reward)
                folder = Path(tmp) / reward
                reward_fn, record, prior = loop_reward(p, rec, calib, X_cal, folder)
                if record is not None:  # the fit's record (the personal estimator's)
                    out[reward] = record
                    when = getattr(p.generation.reward, "when_undecoded", "index")
                    stop = loop_stop_reason(record, when)
            elif reward == "blind":
                noise = np.random.default_rng(noise_seed(subject, "blind"))

                def score(images, noise=noise):
                    return noise.uniform(0, 1, len(images))
            elif reward == "oracle":

                def score(images):
                    return (hidden(images) + 1.0) / 2.0
            elif reward == "noisy_oracle":
                noise = np.random.default_rng(noise_seed(subject, "noisy_oracle"))

                def score(images, noise=noise, sd=spec["oracle_noise"]):
                    return (hidden(images) + 1.0) / 2.0 + noise.normal(0.0, sd, len(images))

            fork = backend.fork()
            run = sizes if stop is None else sizes[: STOPPED_AFTER + 1]
            if reward == "random":
                loop = _random_search(p, run, fork, pool)
            else:
                loop = run_loop(p, rec, reward_fn, run, subject, prior, score, False, fork, pool)
            valence = hidden(loop.images)
            out["by_reward"][reward] = loop_gains(valence, loop.rounds, loop.kinds)
            if stop is not None:  # and the rounds it would have run
                out["by_reward"][reward].update(stopped_after=STOPPED_AFTER, planned=len(sizes) - 1)
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    return out


def _random_search(protocol, sizes: list[int], backend, pool):
    """Random unseen pool images every round: what the loop must beat."""
    from app.evaluation.table1 import LoopResult
    from models.heuristic import HeuristicGenerator

    g = protocol.generation
    gen = HeuristicGenerator(g.heuristic, g.gp, backend, pool, g.seed)
    images, rounds, kinds = [], [], []
    for r, n in enumerate(sizes):
        batch = gen.initial_batch(n)
        images += [c.image for c in batch]
        rounds += [r] * len(batch)
        kinds += ["random" if r else "initial"] * len(batch)
    return LoopResult(images, np.zeros(len(images)), np.asarray(rounds), kinds,
                      np.empty((0,)), [], "random", "valence")  # fmt: skip


# -- the population --------------------------------------------------------------------------
def summarise(
    results: list[dict[str, Any]], rewards: list[str], families: list[str], subject: str
) -> dict:
    """``by_reward.REWARD.by_family.FAMILY`` figures and the goals of reward ``subject``.

    ``subject`` is the protocol's reward (pilot.toml's: the personal reward).
    """
    by_reward: dict[str, Any] = {}
    for reward in rewards:
        fams = {}
        for fam in families:
            rows = [r["by_reward"][reward] for r in results if r["family"] == fam]
            if not rows:
                continue
            a = [row["gain_a"] for row in rows]
            b = [row["gain_b"] for row in rows]
            sa, sb = stats(a), stats(b)
            fams[fam] = {
                "n": len(rows),
                "gain_a_mean": sa["mean"],
                "gain_a_ci95": sa["ci95"],
                "gain_b_mean": sb["mean"],
                "gain_b_ci95": sb["ci95"],
                "frac_improved": sa["share_gt_0"],
                "gain_a_by_rounds": _by_rounds(rows),
                "stopped_share": round(float(np.mean(["stopped_after" in row for row in rows])), 3),
            }
        by_reward[reward] = {"by_family": fams}
    out: dict[str, Any] = {"by_reward": by_reward}
    for reward in rewards:  # a reward fitted on the participant: did it decode?
        decodes, uses = {}, {}
        for fam in families:
            reps = [
                r[reward] for r in results if r["family"] == fam and "decodes" in r.get(reward, {})
            ]
            if reps:
                decodes[fam] = round(float(np.mean([bool(x["decodes"]) for x in reps])), 3)
                uses[fam] = round(float(np.mean([x["reward"] == reward for x in reps])), 3)
        if decodes:
            out[f"{reward}_decodes_share"] = decodes
            out[f"{reward}_estimator_used_share"] = uses  # the rest ran on its fallback
            out[f"{reward}_cv_r_mean"] = {  # the single-trial signal the fit found
                fam: stats([r[reward].get("cv_r") for r in results if r["family"] == fam])["mean"]
                for fam in decodes
            }
            out[f"{reward}_gain_a_by_verdict"] = by_verdict(results, reward, list(decodes))
    if subject in rewards:
        out["goals"] = _goals(by_reward, families, subject)
    return out


def round_counts(rounds: int) -> list[int]:
    """The session lengths (closed-loop rounds after round 0) a run of ``rounds`` is read at."""
    return [n for n in ROUND_COUNTS if n < rounds] + [rounds]


def _by_rounds(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Gain (a) had every session stopped after n rounds, for each n of :func:`round_counts`.

    A session its protocol stopped (``stopped_after``) keeps its gain at every longer
    length, up to the rounds it would have run (``planned``).
    """
    reached = [row.get("planned", len(row["curve"]) - 1) for row in rows]
    out = {}
    for n in round_counts(min(reached)):
        gains = [gain_a_at(row["curve"], min(n, len(row["curve"]) - 1)) for row in rows]
        st = stats(gains)
        out[str(n)] = {"mean": st["mean"], "ci95": st["ci95"], "share_gt_0": st["share_gt_0"]}
    return out


def by_verdict(results: list[dict[str, Any]], reward: str, families: list[str]) -> dict:
    """Gain (a) of ``reward`` per family and over all, by what read the calibration ratings.

    :func:`~models.rewards.personal.calibration_verdict`: the estimator (decoded), the
    index alone, or neither. What a session whose calibration reads nothing gains by
    running on the fallback anyway: the figure that decides whether it should rather stop
    and say so.
    """
    from models.rewards.personal import record_verdict

    out = {}
    for fam in [*families, "all"]:
        rows = [
            r for r in results if fam in ("all", r["family"]) and "decodes" in r.get(reward, {})
        ]
        out[fam] = {}
        for name in ("estimator", "index", "neither"):
            gains = [
                r["by_reward"][reward]["gain_a"] for r in rows if record_verdict(r[reward]) == name
            ]
            st = stats(gains)
            out[fam][name] = {"n": st["n"], "gain_a_mean": st["mean"], "gain_a_ci95": st["ci95"],
                              "share_gt_0": st["share_gt_0"]}  # fmt: skip
    return out


def _goals(by_reward: dict, families: list[str], subject: str) -> dict[str, Any]:
    from models.brain.families.base import family_class

    goals = {}
    for fam in families:
        if not family_class(fam).decodable:  # a weak responder: no goal to meet
            continue
        fig = by_reward[subject]["by_family"].get(fam)
        if fig is None:
            continue
        controls = [
            by_reward[c]["by_family"][fam]["gain_a_mean"]
            for c in ("random", "blind")
            if c in by_reward and fam in by_reward[c]["by_family"]
        ]
        oracle = by_reward.get("oracle", {}).get("by_family", {}).get(fam, {}).get("gain_a_mean")
        m, lo = fig["gain_a_mean"], (fig["gain_a_ci95"] or [None])[0]
        goals[fam] = {
            "gain_a_ge_0.30": m is not None and m >= GOALS["gain_a_min"],
            "ci_above_0": lo is not None and lo > 0,
            "frac_improved_ge_0.85": (fig["frac_improved"] or 0) >= GOALS["frac_improved_min"],
            "ge_2x_best_control": bool(controls)
            and m is not None
            and m >= GOALS["vs_controls"] * max(max(controls), 0.0),
            "ge_70pct_oracle": oracle is not None
            and m is not None
            and m >= GOALS["vs_oracle"] * oracle,
        }
        goals[fam]["realistic_goal_met"] = _meets_realistic_goal(m, lo, controls)
        goals[fam]["realistic_goal_first_met_at_rounds"] = _first_rounds_meeting(
            by_reward, fam, subject
        )
    return goals


def _meets_realistic_goal(m: float | None, lo: float | None, controls: list[float]) -> bool:
    """Gain (a) ``m`` >= +0.15, its CI's low end ``lo`` above 0, >= 2x the better control."""
    return bool(
        m is not None
        and lo is not None
        and m >= REALISTIC_GAIN_A_MIN
        and lo > 0
        and controls
        and m >= GOALS["vs_controls"] * max(max(controls), 0.0)
    )


def _first_rounds_meeting(by_reward: dict, fam: str, subject: str) -> int | None:
    """The fewest closed-loop rounds at which ``subject`` meets the realistic goal (None: never).

    The same rule as ``realistic_goal_met``, with the controls read at the same length.
    """
    for n, fig in by_reward[subject]["by_family"][fam]["gain_a_by_rounds"].items():
        controls = [  # a control read at a length it did not reach (pool used up) does not count
            by_reward[c]["by_family"][fam]["gain_a_by_rounds"].get(n, {}).get("mean")
            for c in ("random", "blind")
            if c in by_reward and fam in by_reward[c]["by_family"]
        ]
        controls = [c for c in controls if c is not None]
        if _meets_realistic_goal(fig["mean"], (fig["ci95"] or [None])[0], controls):
            return int(n)
    return None


def sweep_curve(
    summaries: dict[str, dict], rewards: list[str], families: list[str], subject: str
) -> dict[str, Any]:
    """Per reward and family, the gains at each point of a sweep, in its order.

    ``gains_at``: the points where gain (a)'s 95 % CI lies above 0; ``first_not_gaining``:
    the first point, in the sweep's order, where it does not (None: it gains at every
    point). With ``subject``'s fit, its mean out-of-fold r on the calibration block
    (``cv_r_mean``) beside each point: the single-trial signal the session found.
    """
    out: dict[str, Any] = {}
    for reward in rewards:
        out[reward] = {}
        for fam in families:
            points = []
            for name, summary in summaries.items():
                f = summary["by_reward"][reward]["by_family"].get(fam)
                if f is None:
                    continue
                cv = summary.get(f"{subject}_cv_r_mean", {}).get(fam)
                points.append({"variant": name, **f, f"{subject}_cv_r_mean": cv})
            gains = [p["gain_a_ci95"] is not None and p["gain_a_ci95"][0] > 0 for p in points]
            out[reward][fam] = {
                "points": points,
                "gains_at": [p["variant"] for p, g in zip(points, gains, strict=True) if g],
                "first_not_gaining": next(
                    (p["variant"] for p, g in zip(points, gains, strict=True) if not g), None
                ),
            }
    return out


_GAIN_LABELS = {
    "gain_a": "gain (a): last two rounds\n- round 0",
    "gain_b": "gain (b): chosen\n- random images",
}


def plot_sweep(curve: dict[str, Any], path: Path) -> None:
    """Gains (a) and (b) against the sweep's points, one panel per family, a line per reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = list(curve)
    families = list(dict.fromkeys(f for r in curve.values() for f in r))
    fig, axes = plt.subplots(
        2, len(families), figsize=(3.0 * len(families) + 0.8, 5.6), squeeze=False, sharey="row"
    )
    for j, fam in enumerate(families):
        for i, gain in enumerate(("gain_a", "gain_b")):
            ax = axes[i][j]
            for k, reward in enumerate(rewards):
                points = curve[reward].get(fam, {}).get("points", [])
                pts = [(x, p) for x, p in enumerate(points) if p[f"{gain}_mean"] is not None]
                if not pts:
                    continue
                xs = [x + (k - (len(rewards) - 1) / 2) * 0.04 for x, _ in pts]
                ms = [p[f"{gain}_mean"] for _, p in pts]
                ci = [p[f"{gain}_ci95"] or [m, m] for m, (_, p) in zip(ms, pts, strict=True)]
                err = [[m - c[0] for m, c in zip(ms, ci, strict=True)],
                       [c[1] - m for m, c in zip(ms, ci, strict=True)]]  # fmt: skip
                ax.errorbar(xs, ms, yerr=err, marker="o", ms=3, capsize=2, label=reward,
                            color=f"C{k}", lw=2 if reward == rewards[0] else 1)  # fmt: skip
            names = [
                p["variant"] for p in next(iter(curve.values())).get(fam, {}).get("points", [])
            ]
            ax.set_xticks(range(len(names)), names, fontsize=7)
            ax.axhline(0, color="k", lw=0.6)
            if i == 0:
                ax.set_title(fam, fontsize=9)
                ax.axhline(GOALS["gain_a_min"], color="grey", ls="--", lw=0.6)
            if j == 0:
                ax.set_ylabel(_GAIN_LABELS[gain], fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(summary: dict, path: Path) -> None:
    """Gain (a) per reward and family, mean with its 95 % CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_reward = summary["by_reward"]
    rewards = list(by_reward)
    families = sorted({f for r in by_reward.values() for f in r["by_family"]})
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(families), 3.6))
    width = 0.8 / max(1, len(rewards))
    for i, reward in enumerate(rewards):
        xs, ms, errs = [], [], [[], []]
        for j, fam in enumerate(families):
            f = by_reward[reward]["by_family"].get(fam)
            if f is None or f["gain_a_mean"] is None:
                continue
            lo, hi = f["gain_a_ci95"] or (None, None)
            m = f["gain_a_mean"]
            xs.append(j + (i - (len(rewards) - 1) / 2) * width)
            ms.append(m)
            errs[0].append(0 if lo is None else m - lo)
            errs[1].append(0 if hi is None else hi - m)
        ax.bar(xs, ms, width, yerr=errs, capsize=2, label=reward)
    ax.axhline(0, color="k", lw=0.8)
    ax.axhline(GOALS["gain_a_min"], color="grey", ls="--", lw=0.8)
    ax.set_xticks(range(len(families)), families)
    ax.set_ylabel("gain (a): hidden valence,\nlast two rounds - round 0")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_by_rounds(summary: dict, path: Path) -> None:
    """Gain (a) against the session's length in rounds, a panel per family, a line per reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_reward = summary["by_reward"]
    families = sorted({f for r in by_reward.values() for f in r["by_family"]})
    fig, axes = plt.subplots(
        1, len(families), figsize=(3.0 * len(families) + 0.8, 3.2), squeeze=False, sharey=True
    )
    for j, fam in enumerate(families):
        ax = axes[0][j]
        for k, (reward, fig_r) in enumerate(by_reward.items()):
            pts = fig_r["by_family"].get(fam, {}).get("gain_a_by_rounds", {})
            pts = {int(n): v for n, v in pts.items() if v["mean"] is not None}
            if not pts:
                continue
            xs = sorted(pts)
            ax.plot(xs, [pts[n]["mean"] for n in xs], marker="o", ms=3, color=f"C{k}",
                    label=reward, lw=2 if k == 0 else 1)  # fmt: skip
            band = [(n, pts[n]["ci95"]) for n in xs if pts[n]["ci95"]]
            if band:
                ax.fill_between([n for n, _ in band], [c[0] for _, c in band],
                                [c[1] for _, c in band], color=f"C{k}", alpha=0.12)  # fmt: skip
        ax.axhline(0, color="k", lw=0.6)
        ax.axhline(REALISTIC_GAIN_A_MIN, color="grey", ls="--", lw=0.6)
        ax.set_title(fam, fontsize=9)
        ax.set_xlabel("closed-loop rounds", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("gain (a) had the session\nstopped there", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _client(args):
    from dask.distributed import Client, LocalCluster

    if args.address:
        return Client(args.address), None
    cluster = LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
    )
    return Client(cluster), cluster


def run(args: argparse.Namespace) -> dict:
    """Run every participant on Dask and summarise."""
    from dask.distributed import as_completed

    from app.evaluation.table1 import closed_loop_shape
    from experiment_protocols import load_protocol
    from experiment_protocols.brain_model import SUBJECT_FAMILIES
    from experiment_protocols.participant_time import participant_minutes
    from workers.errors import InputError

    protocol_file = args.protocol or str(
        Path(__file__).parents[2] / "experiment_protocols" / "pilot.toml"
    )
    protocol = load_protocol(protocol_file)
    subject = protocol.generation.reward.mode
    rewards = [r for r in (args.rewards or ",".join(default_rewards(protocol))).split(",") if r]
    families = [f for f in args.families.split(",") if f]
    known = tuple(dict.fromkeys((subject, *modes_without_files()))) + CONTROLS + ON_REQUEST
    bad = [r for r in rewards if r not in known]
    bad += [f for f in families if f not in SUBJECT_FAMILIES]
    if bad:
        raise InputError(
            f"unknown reward or family {bad}: rewards {known}, families {tuple(SUBJECT_FAMILIES)}"
        )
    if args.oracle_noise < 0:
        raise InputError(f"--oracle-noise must be >= 0, not {args.oracle_noise}")
    if args.participants < 1:
        raise InputError("--participants must be at least 1")
    variants = _variants(args, protocol)
    shapes = {}  # each variant's closed loop (a sweep may change it); a bad key fails here
    for v in variants:
        n_rounds, per_round = closed_loop_shape(apply_changes(protocol, v.changes))
        shapes[v.name] = (args.rounds if args.rounds is not None else n_rounds - 1, per_round)
    rounds, per_round = shapes[variants[0].name]
    specs = [
        {
            "subject": args.first_subject + i,
            "family": families[i % len(families)],
            "variant": v.name,
            "changes": v.changes,
            "rewards": rewards,
            "rounds": shapes[v.name][0],
            "round0": shapes[v.name][1],
            "protocol": protocol_file,
            "oracle_noise": args.oracle_noise,
        }
        for v in variants
        for i in range(args.participants)
    ]
    t0 = time.perf_counter()
    client, cluster = _client(args)
    results = []
    try:
        with KeptParticipants(args.out) as kept:
            futures = [client.submit(run_participant, s, pure=False) for s in specs]
            for k, fut in enumerate(as_completed(futures), 1):
                res = fut.result()
                results.append(res)
                kept.add(res)
                at = f", {res['variant']}" if len(variants) > 1 else ""
                what = f"participants ({res['family']}, subject {res['subject']}{at}, "
                what += f"{res['wall_s']:.0f} s)"
                report("loop", k, len(specs), what, t0)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    order = {v.name: k for k, v in enumerate(variants)}
    results.sort(key=lambda r: (order[r["variant"]], r["subject"]))
    summaries = {
        v.name: summarise([r for r in results if r["variant"] == v.name], rewards, families,
                          subject)
        for v in variants
    }  # fmt: skip
    first = summaries[variants[0].name]
    out = {
        "benchmark": "loop",
        "protocol": protocol_file,
        "participants": args.participants,
        "realism": first_level(results),
        "rounds_after_round0": rounds,
        "images_per_round": per_round,
        "participant_minutes_by_rounds": {  # what each session length costs the participant
            str(n): participant_minutes(apply_changes(protocol, variants[0].changes), n)
            for n in round_counts(rounds)
        },
        "engine": f"dask: {args.address or f'LocalCluster, {args.workers} worker process(es)'}",
        "wall_s": round(time.perf_counter() - t0, 1),
        **first,
    }
    path = args.plot or (Path(args.out).with_suffix(".png") if args.out else Path("bench-loop.png"))
    if len(variants) > 1:  # the sweep: every point's figures and the curve
        out["sweep"] = {
            "of": list(dict.fromkeys(k for v in variants for k in v.changes)),
            "variants": [v.name for v in variants],
            "shape": {
                name: {"rounds_after_round0": r, "images_per_round": n}
                for name, (r, n) in shapes.items()
            },  # fmt: skip
            "figures_at_top": variants[0].name,
            "by_variant": summaries,
            "curve": sweep_curve(summaries, rewards, families, subject),
        }
        plot_sweep(out["sweep"]["curve"], path)
    else:
        plot(first, path)
    out["plot"] = str(path)
    out["plot_by_rounds"] = None
    if rounds >= 3:  # the session's length as a lever: the gains against it
        out["plot_by_rounds"] = str(path.with_name(path.stem + "-rounds.png"))
        plot_by_rounds(first, Path(out["plot_by_rounds"]))
    out["per_participant"] = results
    return out


def first_level(results: list[dict[str, Any]]) -> str | None:
    """The realism level of the first participant (the figures at the top of the JSON)."""
    return results[0]["realism"] if results else None


def _variants(args: argparse.Namespace, protocol) -> list[Variant]:
    """The sweep ``--realism`` and ``--vary`` ask for, or the protocol as it is.

    Realism levels run in the presets' order (from the most single-trial signal to the
    least), each ``--vary``'s values in the order given.
    """
    from experiment_protocols.brain_model import REALISM_LEVELS
    from workers.errors import InputError

    axes = []
    if args.realism:
        levels = [lv.strip() for lv in args.realism.split(",") if lv.strip()]
        bad = [lv for lv in levels if lv not in REALISM_LEVELS]
        if bad or not levels:
            raise InputError(
                f"--realism {args.realism!r}: expected some of {tuple(REALISM_LEVELS)}"
            )
        order = list(REALISM_LEVELS)
        axes.append(realism_variants(sorted(dict.fromkeys(levels), key=order.index)))
    axes += [vary_variants(text) for text in args.vary]
    if not axes:
        return [Variant(protocol.brain_model.realism)]
    return combine(axes)
