"""Heuristic generator vs random search against the brain model's hidden affect (oracle).

For each seed, a simulated subject (``BrainModel(subject_seed=seed)``) rates every shown
image by its hidden valence (the target affect: amusement = high valence). The reward
given to the generator is that valence mapped to [0, 1] plus Gaussian noise: a fast
stand-in for EEG rewards used by this benchmark ALONE (the session loop never sees the
oracle). The heuristic generator (procedural backend, the protocol's generation
settings) runs round 0 + ``--rounds`` rounds, once per ``--refine-in`` mode (render:
generate + re-embed at every inner step; embedding: inner steps on the GP mean, one
render per round), each mode on the same subject, pool and seeds, from the same backend
state; random search shows the same number of random renders per round.

``oracle_gain`` is last-round minus first-round mean oracle valence of the shown images,
averaged over seeds (``heuristic``: the protocol's ``refine_in`` mode when it ran, else
the one mode run); curves are the per-round means. ``summary`` gives every per-seed
figure as mean, 95% t-interval over seeds and the share of seeds above 0, including
the paired per-seed difference embedding minus render when both modes ran.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from app.bench._stats import stats

MODES = ("render", "embedding")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("--seeds", type=int, default=5, help="simulated subjects (>= 5 for figures)")
    p.add_argument("--rounds", type=int, default=8, help="rounds after round 0")
    p.add_argument("--noise", type=float, default=0.1, help="SD of the reward noise")
    p.add_argument(
        "--target", choices=("valence", "arousal"), default="valence", help="affect to raise"
    )
    p.add_argument("--protocol", default=None, metavar="FILE", help="protocol file")
    p.add_argument("--inner-steps", type=int, default=None, help="override heuristic.inner_steps")
    p.add_argument(
        "--refine-in",
        choices=(*MODES, "both"),
        default="both",
        help="heuristic.refine_in mode(s) to run on the same subjects (default: both)",
    )


def _oracle(brain, images, target: str) -> np.ndarray:
    out = []
    for im in images:
        valence, arousal = brain.affect(im)
        out.append(valence if target == "valence" else arousal)
    return np.asarray(out)


def _to_reward(values: np.ndarray, target: str) -> np.ndarray:
    return (values + 1.0) / 2.0 if target == "valence" else values


def run_heuristic(
    backend, pool, gen_settings, brain, target, rounds, noise, seed, heuristic=None
) -> list[float]:
    """Per-round mean oracle affect of the images the heuristic generator shows.

    ``heuristic`` replaces ``gen_settings.heuristic`` (another ``refine_in``).
    """
    from models.heuristic import HeuristicGenerator

    h = gen_settings.heuristic if heuristic is None else heuristic
    rng = np.random.default_rng([seed, 7])
    gen = HeuristicGenerator(h, gen_settings.gp, backend, pool, seed=seed)
    curve = []
    for _ in range(rounds + 1):
        batch = gen.next_round()
        truth = _oracle(brain, [c.image for c in batch], target)
        rewards = _to_reward(truth, target) + rng.normal(0.0, noise, len(batch))
        for j, (c, r) in enumerate(zip(batch, rewards, strict=True)):
            gen.observe(f"r{gen.round:02d}-{j}", c.embedding, float(r))
        gen.refit()
        curve.append(float(truth.mean()))
    return curve


def run_random(backend, brain, target, sizes, seed) -> list[float]:
    """Per-round mean oracle affect of random renders, with the same batch sizes."""
    from models.backends.procedural import sample_parameters

    rng = np.random.default_rng([seed, 11])
    curve = []
    for n in sizes:
        params = sample_parameters(n, rng)
        images = backend.render(params, [int(s) for s in rng.integers(0, 2**31 - 1, n)])
        curve.append(float(_oracle(brain, images, target).mean()))
    return curve


def run(args: argparse.Namespace) -> dict:
    """Run the optimisers over the seeds and summarise."""
    import torch

    from experiment_protocols import load_protocol
    from models.backends.procedural import ProceduralBackend, procedural_pool
    from models.brain.response import BrainModel

    torch.set_num_threads(2)
    gen_settings = load_protocol(args.protocol).generation
    if args.inner_steps is not None:
        gen_settings.heuristic.inner_steps = args.inner_steps
    refine_in = getattr(args, "refine_in", "both")
    modes = list(MODES) if refine_in == "both" else [refine_in]
    primary = gen_settings.heuristic.refine_in
    primary = primary if primary in modes else modes[0]
    settings = {m: gen_settings.heuristic.model_copy(update={"refine_in": m}) for m in modes}
    h = gen_settings.heuristic
    sizes = [h.initial_images] + [h.n_children + h.n_nearest + h.n_random] * args.rounds
    p = gen_settings.procedural
    t0 = time.perf_counter()
    fresh = ProceduralBackend(p.size, p.fit_samples, p.ridge_alpha, seed=gen_settings.seed)
    curves: dict[str, list[list[float]]] = {m: [] for m in modes}
    random_curves, per_seed = [], []
    for seed in range(args.seeds):
        brain = BrainModel(subject_seed=seed)
        backend = fresh.fork()
        pool = procedural_pool(backend, p.pool_size, seed=seed)
        by_mode = {}
        for m in modes:
            t_run = time.perf_counter()
            c = run_heuristic(
                backend.fork(),
                pool,
                gen_settings,
                brain,
                args.target,
                args.rounds,
                args.noise,
                seed,
                heuristic=settings[m],
            )
            curves[m].append(c)
            by_mode[m] = {
                "curve": [round(v, 4) for v in c],
                "oracle_gain": round(c[-1] - c[0], 4),
                "s": round(time.perf_counter() - t_run, 2),
            }
        r = run_random(backend, brain, args.target, sizes, seed)
        random_curves.append(r)
        per_seed.append(
            {
                "subject_seed": seed,
                "heuristic": by_mode[primary]["curve"],
                "random": [round(v, 4) for v in r],
                "heuristic_s": by_mode[primary]["s"],
                "refine_in": by_mode,
            }
        )
    H = {m: np.asarray(curves[m]) for m in modes}
    R = np.asarray(random_curves)
    gain = {m: H[m][:, -1] - H[m][:, 0] for m in modes}
    gain_r = R[:, -1] - R[:, 0]
    last_vs_random = {m: H[m][:, -1] - R[:, -1] for m in modes}
    mean_1_on = {m: H[m][:, 1:].mean(1) for m in modes}
    summary: dict[str, dict] = {
        "oracle_gain": {**{m: stats(gain[m]) for m in modes}, "random": stats(gain_r)},
        "last_round_minus_random": {m: stats(last_vs_random[m]) for m in modes},
        "mean_over_rounds_1_on_minus_random": {
            m: stats(mean_1_on[m] - R[:, 1:].mean(1)) for m in modes
        },
    }
    if len(modes) == 2:
        summary["embedding_minus_render"] = {
            "oracle_gain": stats(gain["embedding"] - gain["render"]),
            "last_round": stats(H["embedding"][:, -1] - H["render"][:, -1]),
            "mean_over_rounds_1_on": stats(mean_1_on["embedding"] - mean_1_on["render"]),
        }
    Hp = H[primary]
    return {
        "benchmark": "optimizer",
        "reward": f"oracle {args.target} mapped to [0, 1] + N(0, {args.noise}) (benchmark only)",
        "backend": ProceduralBackend.name,
        "seeds": args.seeds,
        "rounds": args.rounds,
        "images_per_round": sizes,
        "inner_steps": h.inner_steps,
        "refine_in": modes,
        "heuristic_is": primary,
        "oracle_gain": {
            "heuristic": round(float(gain[primary].mean()), 4),
            "random": round(float(gain_r.mean()), 4),
            **{f"heuristic_{m}": round(float(gain[m].mean()), 4) for m in modes},
        },
        "oracle_gain_sd": {
            "heuristic": round(float(gain[primary].std()), 4),
            "random": round(float(gain_r.std()), 4),
            **{f"heuristic_{m}": round(float(gain[m].std()), 4) for m in modes},
        },
        "last_round_minus_random": round(float((Hp[:, -1] - R[:, -1]).mean()), 4),
        "mean_over_rounds_1_on": {
            "heuristic": round(float(Hp[:, 1:].mean()), 4),
            "random": round(float(R[:, 1:].mean()), 4),
            **{f"heuristic_{m}": round(float(H[m][:, 1:].mean()), 4) for m in modes},
        },
        "summary": summary,
        "curves_mean": {
            "heuristic": [round(float(v), 4) for v in Hp.mean(0)],
            "random": [round(float(v), 4) for v in R.mean(0)],
            **{f"heuristic_{m}": [round(float(v), 4) for v in H[m].mean(0)] for m in modes},
        },
        "heuristic_s_mean": {
            m: round(float(np.mean([s["refine_in"][m]["s"] for s in per_seed])), 2) for m in modes
        },
        "per_seed": per_seed,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
