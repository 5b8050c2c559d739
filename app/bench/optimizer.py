"""Heuristic generator vs random search against the brain model's hidden affect (oracle).

For each seed, a simulated subject (``BrainModel(subject_seed=seed)``) rates every shown
image by its hidden valence (the target affect: amusement = high valence). The reward
given to the generator is that valence mapped to [0, 1] plus Gaussian noise: a fast
stand-in for EEG rewards used by this benchmark ALONE (the session loop never sees the
oracle). The heuristic generator (procedural backend, the protocol's generation
settings) runs round 0 + ``--rounds`` rounds; random search shows the same number of
random renders per round. ``oracle_gain`` is last-round minus first-round mean oracle
valence of the shown images, averaged over seeds; curves are the per-round means.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


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


def _oracle(brain, images, target: str) -> np.ndarray:
    out = []
    for im in images:
        valence, arousal = brain.affect(im)
        out.append(valence if target == "valence" else arousal)
    return np.asarray(out)


def _to_reward(values: np.ndarray, target: str) -> np.ndarray:
    return (values + 1.0) / 2.0 if target == "valence" else values


def run_heuristic(backend, pool, gen_settings, brain, target, rounds, noise, seed) -> list[float]:
    """Per-round mean oracle affect of the images the heuristic generator shows."""
    from models.heuristic import HeuristicGenerator

    rng = np.random.default_rng([seed, 7])
    gen = HeuristicGenerator(gen_settings.heuristic, gen_settings.gp, backend, pool, seed=seed)
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
    """Run both optimisers over the seeds and summarise."""
    import torch

    from experiment_protocols import load_protocol
    from models.backends.procedural import ProceduralBackend, procedural_pool
    from models.brain_response import BrainModel

    torch.set_num_threads(2)
    gen_settings = load_protocol(args.protocol).generation
    if args.inner_steps is not None:
        gen_settings.heuristic.inner_steps = args.inner_steps
    p = gen_settings.procedural
    t0 = time.perf_counter()
    backend = ProceduralBackend(p.size, p.fit_samples, p.ridge_alpha, seed=gen_settings.seed)
    heuristic_curves, random_curves, per_seed = [], [], []
    for seed in range(args.seeds):
        brain = BrainModel(subject_seed=seed)
        pool = procedural_pool(backend, p.pool_size, seed=seed)
        t_seed = time.perf_counter()
        h = run_heuristic(
            backend, pool, gen_settings, brain, args.target, args.rounds, args.noise, seed
        )
        h_s = time.perf_counter() - t_seed
        sizes = [gen_settings.heuristic.initial_images] + [
            gen_settings.heuristic.n_children
            + gen_settings.heuristic.n_nearest
            + gen_settings.heuristic.n_random
        ] * args.rounds
        r = run_random(backend, brain, args.target, sizes, seed)
        heuristic_curves.append(h)
        random_curves.append(r)
        per_seed.append(
            {
                "subject_seed": seed,
                "heuristic": [round(v, 4) for v in h],
                "random": [round(v, 4) for v in r],
                "heuristic_s": round(h_s, 2),
            }
        )
    H, R = np.asarray(heuristic_curves), np.asarray(random_curves)
    gain_h = H[:, -1] - H[:, 0]
    gain_r = R[:, -1] - R[:, 0]
    return {
        "benchmark": "optimizer",
        "reward": f"oracle {args.target} mapped to [0, 1] + N(0, {args.noise}) (benchmark only)",
        "backend": "procedural",
        "seeds": args.seeds,
        "rounds": args.rounds,
        "images_per_round": sizes,
        "inner_steps": gen_settings.heuristic.inner_steps,
        "oracle_gain": {
            "heuristic": round(float(gain_h.mean()), 4),
            "random": round(float(gain_r.mean()), 4),
        },
        "oracle_gain_sd": {
            "heuristic": round(float(gain_h.std()), 4),
            "random": round(float(gain_r.std()), 4),
        },
        "last_round_minus_random": round(float((H[:, -1] - R[:, -1]).mean()), 4),
        "mean_over_rounds_1_on": {
            "heuristic": round(float(H[:, 1:].mean()), 4),
            "random": round(float(R[:, 1:].mean()), 4),
        },
        "curves_mean": {
            "heuristic": [round(float(v), 4) for v in H.mean(0)],
            "random": [round(float(v), 4) for v in R.mean(0)],
        },
        "per_seed": per_seed,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
