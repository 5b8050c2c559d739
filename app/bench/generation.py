"""Per-stage times of the generation worker's rounds, batched vs sequential, GP at 500 points.

The worker (:class:`workers.generation.GenerationService`) runs in this process behind
a real ZeroMQ ROUTER socket on loopback TCP; a DEALER client plays the session: for
every image of a round it sends one synthetic epoch (17 ATM-S channels, 250 Hz, -0.2 to
1.0 s) and gets its reward (semantic mode: a randomly initialised ATM-S encoder and a
random target embedding, so "encode" is a real ATM-S forward pass), then asks for the
next round. Rounds of 4 and of 8 images are measured after two warm-up rounds.

Stages (ms): encode (ATM-S), reward (the rest of the reward call), gp_update
(incremental Cholesky update with the new rewards), gp_gradient, generate, embed,
select (pool images for exploration), serialise (PNG + message), transfer (ZeroMQ
send/receive/decode, = client round trip minus the worker's time).
``overhead_fraction`` = 1 - (encode + reward + GP + generate + embed) / (sum of the
client's round trips for the round's epochs and its image request): everything that
is not model or surrogate computation. ``batched_speedup_vs_sequential`` = time of the
prototype's sequential schedule (each child refined alone: one image per backend call)
over the batched schedule (all children in one call per inner step), same children,
same seeds, same backend. ``gp_500_update_gradient_ms``: adding a round's 8 rewards
to a fitted GP over 492 points in 1024-d (block Cholesky update) plus the posterior-mean
gradient at 8 embeddings, median of 20; the hyperparameter refit happens in idle time
and is reported apart.

CPU (default): the procedural backend and a TINY randomly initialised SDXL pipeline
(same ``sdxl`` backend code). ``--device cuda``: SDXL-Lightning from local weights, or
with ``--random-weights`` the full-size SDXL UNet/VAE/ViT-H/IP-Adapter with RANDOM
weights (same shapes and FLOPs, noise images), for timing without downloads.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the real SDXL backend")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="with --device cuda: full-size SDXL with RANDOM weights (timing only)",
    )
    p.add_argument("--steps", type=int, default=4, choices=(2, 4, 8), help="Lightning steps")
    p.add_argument(
        "--inner-steps",
        type=int,
        default=1,
        help="inner refinement steps per round (1 = one batched generation pass)",
    )
    p.add_argument("--size", type=int, default=1024, help="SDXL image side on cuda")
    p.add_argument("--trial-s", type=float, default=0.2, help="pause between epochs (s)")
    p.add_argument("--protocol", default=None, metavar="FILE", help="protocol file")
    p.add_argument("--backends", default=None, help="comma list (cpu: procedural,sdxl-tiny)")


# -- backends -------------------------------------------------------------------------------
def _image_folder(root: Path, n: int, size: int) -> Path:
    """A folder of ``n`` procedural PNGs, used as the stimulus pool of an SDXL backend."""
    from models.backends.procedural import ProceduralRenderer, sample_parameters

    folder = root / f"pool-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = ProceduralRenderer(size).render(sample_parameters(n, rng), list(range(n)))
    from PIL import Image

    for i, a in enumerate(rgb):
        Image.fromarray((a * 255).astype(np.uint8)).save(folder / f"img{i:03d}.png")
    return folder


# -- measurement ----------------------------------------------------------------------------
def _epoch(trial: int, image_id: str, rng: np.random.Generator):
    from models.brain_response import ATM_CHANNELS
    from workers.messages import EpochMessage

    x = rng.normal(0, 10, (len(ATM_CHANNELS), 301)).astype(np.float32)
    msg = EpochMessage.of(
        x,
        session="bench",
        trial_id=trial,
        marker={"event": "stimulus_onset", "trial": trial, "image": f"/bench/{image_id}.png"},
        ch_names=list(ATM_CHANNELS),
        sfreq=250.0,
        tmin=-0.2,
    )
    return msg, x


def _stats(values: list[float]) -> float:
    return round(float(np.median(values)), 3) if values else float("nan")


def measure_backend(name, backend, pool, protocol, reward_fn, sizes, trial_s) -> dict:
    """Two warm-up rounds, then one measured round per size, over real ZeroMQ."""
    import socket

    import zmq

    from workers import transport
    from workers.generation import GenerationClient, GenerationService
    from workers.messages import ErrorReply, ImageBatch, ImageRequest

    service = GenerationService(protocol, backend, pool, reward_fn, store=None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    router, _ = transport.bind(zmq.Context.instance(), zmq.ROUTER, endpoint)
    stop = threading.Event()
    thread = threading.Thread(target=service.serve, args=(router, None, stop.is_set), daemon=True)
    thread.start()
    client = GenerationClient(endpoint)
    rng = np.random.default_rng(0)
    trial = 0
    previous: list[int] = []
    epochs: list = []
    out: dict[str, dict] = {}
    try:
        plan = [("warmup", 8), ("warmup", 8)] + [("measure", n) for n in sizes]
        for round_, (what, n) in enumerate(plan):
            req = ImageRequest(
                session="bench", block="closed_loop", round=round_, n_images=n, trials=previous
            )
            t0 = time.perf_counter()
            batch, _ = client.request(req, timeout_s=600)
            rtt_image = (time.perf_counter() - t0) * 1e3
            if isinstance(batch, ErrorReply) or not isinstance(batch, ImageBatch):
                raise RuntimeError(f"{name}: round {round_} failed: {batch}")
            if what == "measure":
                out[str(n)] = _round_figures(batch, rtt_image, epochs)
            previous, epochs = [], []
            for info in batch.images:
                time.sleep(trial_s)
                msg, x = _epoch(trial, info.image_id, rng)
                t0 = time.perf_counter()
                reply, _ = client.request(msg, (x,), timeout_s=60)
                epochs.append(((time.perf_counter() - t0) * 1e3, reply))
                previous.append(trial)
                trial += 1
        speed = service._executor.submit(_batched_vs_sequential, service.generator).result()
        refit_ms = service._executor.submit(_refit_ms, service.generator).result()
    finally:
        stop.set()
        thread.join(10)
        client.close()
        router.close(0)
        service.close()
    return {"rounds": out, **speed, "gp_refit_ms": refit_ms, **backend.describe()}


def _round_figures(batch, rtt_image: float, epochs: list) -> dict:
    """Stage times of one round: its epochs' rewards, then its image request."""
    t = batch.timing_ms
    rtt_epochs = [r for r, _ in epochs]
    encode = [rep.details.get("encode_ms", 0.0) for _, rep in epochs]
    reward = [rep.compute_ms - e for (_, rep), e in zip(epochs, encode, strict=True)]
    worker_ms = t["wait_rewards_ms"] + t["round_ms"] + t["serialise_ms"]
    total = sum(rtt_epochs) + rtt_image
    compute = (
        sum(encode)
        + sum(reward)
        + t["gp_update_ms"]
        + t["gp_gradient_ms"]
        + t["generate_ms"]
        + t["embed_ms"]
    )
    return {
        "n_images": len(batch.images),
        "stages_ms": {
            "encode": round(sum(encode), 3),
            "reward": round(sum(reward), 3),
            "gp_update": t["gp_update_ms"],
            "gp_gradient": t["gp_gradient_ms"],
            "generate": t["generate_ms"],
            "embed": t["embed_ms"],
            "select": t["select_ms"],
            "serialise": t["serialise_ms"],
            "transfer": round(rtt_image - worker_ms, 3),
        },
        "epoch_round_trip_ms_median": _stats(rtt_epochs),
        "image_request_round_trip_ms": round(rtt_image, 3),
        "ready_after_last_reward_ms": round(rtt_image, 3),
        "round_total_ms": round(total, 3),
        "overhead_fraction": round(1.0 - compute / total, 4) if total > 0 else None,
        "deadline_missed": batch.deadline_missed,
    }


def _batched_vs_sequential(generator, n_children: int = 4) -> dict:
    """Refine the same 4 children batched, then one at a time (the prototype)."""
    import copy

    parents = generator.select_parents()
    children = generator.make_children(parents)[:n_children]
    if not generator.backend.can_generate or len(children) < n_children:
        return {"batched_speedup_vs_sequential": None}
    t0 = time.perf_counter()
    generator.refine(copy.deepcopy(children))
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for child in copy.deepcopy(children):
        generator.refine([child])
    sequential = time.perf_counter() - t0
    return {
        "refine_4_children_batched_ms": round(batched * 1e3, 3),
        "refine_4_children_sequential_ms": round(sequential * 1e3, 3),
        "batched_speedup_vs_sequential": round(sequential / batched, 3),
    }


def _refit_ms(generator) -> float:
    t0 = time.perf_counter()
    generator.refit()
    return round((time.perf_counter() - t0) * 1e3, 3)


def gp_500(dim: int = 1024, n: int = 500, new: int = 8, reps: int = 20, refit_iters: int = 10):
    """Incremental update + gradient of the GP at 500 points in 1024-d (CPU)."""
    from models.gp import GPSurrogate

    rng = np.random.default_rng(0)
    w = rng.normal(size=dim) / np.sqrt(dim)
    X = rng.normal(size=(n, dim))
    y = np.tanh(X @ w) + 0.05 * rng.normal(size=n)
    gp = GPSurrogate().fit(X[: n - new], y[: n - new], iters=5)
    base = (gp.X.copy(), gp.y.copy(), gp._L.copy(), gp._alpha.copy(), gp._Xs.copy(), gp._sq.copy())
    update, grad = [], []
    for _ in range(reps):
        gp.X, gp.y, gp._L, gp._alpha, gp._Xs, gp._sq = (a.copy() for a in base)
        t0 = time.perf_counter()
        gp.add(X[n - new :], y[n - new :])
        t1 = time.perf_counter()
        gp.mean_grad(X[:new] + 0.1)
        t2 = time.perf_counter()
        update.append((t1 - t0) * 1e3)
        grad.append((t2 - t1) * 1e3)
    t0 = time.perf_counter()
    gp.fit(iters=refit_iters)
    refit = (time.perf_counter() - t0) * 1e3
    total = [u + g for u, g in zip(update, grad, strict=True)]
    return {
        "gp_500_update_gradient_ms": _stats(total),
        "gp_500_update_ms": _stats(update),
        "gp_500_gradient_ms": _stats(grad),
        "gp_500_update_gradient_ms_max": round(max(total), 3),
        "gp_500_refit_ms": round(refit, 1),
        "gp_500_refit_iters": refit_iters,
        "gp_500_note": "update = block Cholesky with 8 new points, fixed hyperparameters; "
        "refit = warm-started Adam, bounded, in idle time between rounds",
    }


def run(args: argparse.Namespace) -> dict:
    """Measure every backend and summarise."""
    import torch

    from experiment_protocols import load_protocol
    from models.atms import ATMS
    from models.backends.base import BackendUnavailableError
    from models.brain_response import ATM_CHANNELS
    from models.rewards import SemanticReward
    from workers.generation import GenerationError

    cuda = args.device.startswith("cuda")
    if not cuda:
        torch.set_num_threads(2)
    protocol = load_protocol(args.protocol)
    protocol.generation.heuristic.inner_steps = args.inner_steps
    protocol.generation.deadline_s = 600.0
    protocol.generation.reward_wait_s = 30.0
    protocol.generation.sdxl.diffusion_steps = args.steps
    encoder = ATMS().eval()
    target = np.random.default_rng(1).normal(size=encoder.config.embed_dim)
    reward_fn = SemanticReward(encoder, target, ATM_CHANNELS)
    names = (args.backends or ("sdxl" if cuda else "procedural,sdxl-tiny")).split(",")
    result: dict = {
        "benchmark": "generation",
        "device": args.device,
        "inner_steps": args.inner_steps,
        "lightning_steps": args.steps,
        "reward": "semantic: random ATM-S encoder + random target (timing only)",
        **gp_500(),
        "backends": {},
    }
    tmp = tempfile.TemporaryDirectory(prefix="eegs-bench-gen-")
    try:
        for name in names:
            t0 = time.perf_counter()
            try:
                backend, pool = _build(name, args, protocol, Path(tmp.name))
            except BackendUnavailableError as err:
                raise GenerationError(f"backend {name}: {err}") from None
            load_s = time.perf_counter() - t0
            res = measure_backend(name, backend, pool, protocol, reward_fn, (4, 8), args.trial_s)
            res["load_s"] = round(load_s, 2)
            if name == "sdxl":
                res["image_size"] = args.size
                res["weights"] = "RANDOM (timing only)" if args.random_weights else "pretrained"
                res["device_name"] = torch.cuda.get_device_name() if cuda else "cpu"
            result["backends"][name] = res
            del backend, pool
    finally:
        tmp.cleanup()
    b = result["backends"]
    result["overhead_fraction"] = max(
        r["overhead_fraction"] for v in b.values() for r in v["rounds"].values()
    )
    speedups = {k: v["batched_speedup_vs_sequential"] for k, v in b.items()}
    result["batched_speedup_vs_sequential"] = speedups
    if cuda:
        result["batch4_ready_after_last_reward_s"] = round(
            b["sdxl"]["rounds"]["4"]["ready_after_last_reward_ms"] / 1e3, 3
        )
    return result


def _build(name: str, args, protocol, tmp: Path):
    from models.backends.pool import ImagePool

    g = protocol.generation
    if name == "procedural":
        from models.backends.procedural import ProceduralBackend, procedural_pool

        p = g.procedural
        backend = ProceduralBackend(p.size, p.fit_samples, p.ridge_alpha, seed=g.seed)
        return backend, procedural_pool(backend, p.pool_size, seed=g.seed)
    from models.backends.sdxl import SDXLBackend

    if name == "sdxl-tiny":
        backend = SDXLBackend.tiny_random(channels=(32, 64), layers=2, size=64, steps=args.steps)
        folder = _image_folder(tmp, 32, 64)
    elif name == "sdxl":
        g.sdxl.width = g.sdxl.height = args.size
        if args.random_weights:
            backend = SDXLBackend.random_full_size(g.sdxl, args.device, g.dtype, g.compile)
        else:
            backend = SDXLBackend.from_pretrained(g.sdxl, args.device, g.dtype, g.compile)
        folder = _image_folder(tmp, 32, 512)
    else:
        raise ValueError(f"unknown backend {name!r}")
    backend.warmup(batch=4)
    pool = ImagePool.from_folder(folder, backend.embed, backend.name)
    return backend, pool
