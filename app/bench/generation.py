"""Per-stage times of the generation worker's rounds, batched vs sequential, GP at 500 points.

The worker (:class:`workers.generation.service.GenerationService`) runs in this process behind
a real ZeroMQ ROUTER socket on loopback TCP and plays its part of a session as the
presentation drives it: for every image of a round one synthetic epoch (17 ATM-S
channels, 250 Hz, -0.2 to 1.0 s) comes in, ``--trial-s`` apart, and gets its reward
(semantic mode: a randomly initialised ATM-S encoder and a random target embedding, so
"encode" is a real ATM-S forward pass); the request for the next round goes out, on a
second socket, as the round's LAST image is shown (before its epoch), exactly when
``eegs present`` sends it. Settings are the protocol's (``heuristic.inner_steps``,
``heuristic.refine_in``, ``sdxl.diffusion_steps``) unless an option overrides them.

Each measured row is one closed-loop cycle of ``n`` images and says what it holds:
``epochs_round`` (the round whose ``n`` epochs were rewarded) and ``request_round``
(the round generated from those rewards). Stages (ms): encode (ATM-S), reward (the rest
of the reward call), gp_update, gp_gradient, generate, embed, select, serialise,
transfer (= the request's round trip minus the worker's time).
``ready_after_last_reward_ms``: from the client receiving the last epoch's reward to
the client holding the next round's batch, the time a participant would wait. The
worker's round starts when that reward is in, before its reply reaches the client, so
the round ends within ``ready_after_last_reward_ms + last_epoch_round_trip_ms``.
``overhead_fraction`` = 1 - model and surrogate compute / the cycle's client time.
``batched_speedup_vs_sequential`` = the prototype's schedule (each child refined alone)
over the batched one, same children and seeds. ``gp_500_update_gradient_ms``: adding 8
rewards to a fitted GP over 492 points in 1024-d plus the posterior-mean gradient at 8
embeddings, median of 20.

CPU (default): the procedural backend and a TINY randomly initialised SDXL pipeline
(same ``sdxl`` backend code). ``--device cuda``: SDXL-Lightning from local weights, or
with ``--random-weights`` the full-size SDXL with RANDOM weights (same shapes and
FLOPs, noise images). ``--full-size --random-weights`` (any device): the dry run of a
lab's set-up: the real SDXL architecture with random weights is written in the Hub's
file layout, loaded back through :meth:`SDXLBackend.from_pretrained` (the lab's code
path) and renders one batch of 4; its phase times and peak RSS are in
``full_size_dry_run``, and ``round_budget`` sets a round's generation cost against the
trials it must hide behind.
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
        help="sdxl: full-size SDXL with RANDOM weights (timing only)",
    )
    p.add_argument(
        "--full-size",
        action="store_true",
        help="with --random-weights: dry run of the lab's load path (write, load, render)",
    )
    p.add_argument(
        "--weights-dir",
        type=Path,
        metavar="DIR",
        help="--full-size: write the random weights here and keep them (default: a temp dir)",
    )
    p.add_argument(
        "--dry-run-size", type=int, default=256, help="--full-size: image side of the render"
    )
    p.add_argument(
        "--dry-run-steps", type=int, default=1, help="--full-size: Lightning steps of the render"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        choices=(2, 4, 8),
        help="Lightning steps (default: the protocol's generation.sdxl.diffusion_steps)",
    )
    p.add_argument(
        "--inner-steps",
        type=int,
        default=None,
        help="inner refinement steps per round (default: generation.heuristic.inner_steps)",
    )
    p.add_argument(
        "--refine-in",
        choices=("render", "embedding"),
        default=None,
        help="where the inner steps are taken (default: generation.heuristic.refine_in)",
    )
    p.add_argument("--size", type=int, default=1024, help="SDXL image side on cuda")
    p.add_argument("--trial-s", type=float, default=0.2, help="pause between epochs (s)")
    p.add_argument("--protocol", default=None, metavar="FILE", help="protocol file")
    p.add_argument(
        "--backends",
        default=None,
        help=f"comma list of backends, or NAME{TINY} (a GPU backend at a tiny size); default "
        f"on the CPU: the stand-ins and each GPU backend{TINY}, on CUDA: the GPU backends",
    )


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
    from models.montage import ATM_CHANNELS
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
    """Two warm-up cycles, then one measured cycle per size, over real ZeroMQ."""
    import socket

    import zmq

    from workers import transport
    from workers.generation.service import GenerationClient, GenerationService
    from workers.messages import ErrorReply, ImageBatch, ImageRequest, encode

    service = GenerationService(protocol, backend, pool, reward_fn, store=None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    router, _ = transport.bind(zmq.Context.instance(), zmq.ROUTER, endpoint)
    stop = threading.Event()
    thread = threading.Thread(target=service.serve, args=(router, None, stop.is_set), daemon=True)
    thread.start()
    epochs_client = GenerationClient(endpoint)  # the acquisition's side: epochs -> rewards
    images_client = GenerationClient(endpoint)  # the presentation's side: image requests
    rng = np.random.default_rng(0)
    trial = 0
    out: dict[str, dict] = {}

    def request(round_: int, n: int, trials: list[int]) -> None:
        req = ImageRequest(
            session="bench", block="closed_loop", round=round_, n_images=n, trials=trials
        )
        images_client.send_frames(encode(req))

    def batch_of(round_: int) -> ImageBatch:
        batch, _ = images_client.receive(timeout_s=1200)
        if isinstance(batch, ErrorReply) or not isinstance(batch, ImageBatch):
            raise RuntimeError(f"{name}: round {round_} failed: {batch}")
        return batch

    try:
        plan = [("warmup", 8), ("warmup", 8)] + [("measure", n) for n in sizes]
        round_ = 0
        request(round_, plan[0][1], [])
        batch = batch_of(round_)
        for what, n in plan:
            # show `batch` (round `round_`): an epoch per image; the next round is asked
            # for as the last image shows, and generated from these epochs' rewards
            epochs, trials = [], []
            if len(batch.images) != n:
                request(round_ + 1, n, [])  # a round of the size this cycle measures
                round_ += 1
                batch = batch_of(round_)
            for i, info in enumerate(batch.images):
                time.sleep(trial_s)
                if i == len(batch.images) - 1:
                    request(round_ + 1, n, [*trials, trial])
                msg, x = _epoch(trial, info.image_id, rng)
                t0 = time.perf_counter()
                reply, _ = epochs_client.request(msg, (x,), timeout_s=60)
                t_reward = time.perf_counter()
                epochs.append(((t_reward - t0) * 1e3, reply))
                trials.append(trial)
                trial += 1
            t_request = t_reward
            batch = batch_of(round_ + 1)
            waited = (time.perf_counter() - t_request) * 1e3
            if what == "measure":
                out[str(n)] = {
                    "epochs_round": round_,
                    "request_round": round_ + 1,
                    **_cycle_figures(batch, waited, epochs),
                }
            round_ += 1
        speed = service.rounds.executor.submit(_batched_vs_sequential, service.generator).result()
        refit_ms = service.rounds.executor.submit(_refit_ms, service.generator).result()
    finally:
        stop.set()
        thread.join(10)
        epochs_client.close()
        images_client.close()
        router.close(0)
        service.close()
    return {"rounds": out, **speed, "gp_refit_ms": refit_ms, **backend.describe()}


def _cycle_figures(batch, ready_after_last_reward: float, epochs: list) -> dict:
    """Stage times of one cycle: a round's epochs and rewards, then the next round."""
    t = batch.timing_ms
    rtt_epochs = [r for r, _ in epochs]
    encode = [rep.details.get("encode_ms", 0.0) for _, rep in epochs]
    reward = [rep.compute_ms - e for (_, rep), e in zip(epochs, encode, strict=True)]
    worker_after_reward = t["round_ms"] + t["serialise_ms"]
    total = sum(rtt_epochs) + ready_after_last_reward
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
            "transfer": round(max(0.0, ready_after_last_reward - worker_after_reward), 3),
        },
        "epoch_round_trip_ms_median": _stats(rtt_epochs),
        "last_epoch_round_trip_ms": round(rtt_epochs[-1], 3) if rtt_epochs else None,
        "ready_after_last_reward_ms": round(ready_after_last_reward, 3),
        "worker_round_ms": t["round_ms"],
        "cycle_total_ms": round(total, 3),
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

    from app.bench._sdxl_dry_run import dry_run, round_budget
    from experiment_protocols import load_protocol
    from experiment_protocols.generation import BACKENDS
    from models.backends.base import BackendUnavailableError
    from models.decoders.atms import ATMS
    from models.montage import ATM_CHANNELS
    from models.rewards.semantic import SemanticReward
    from workers.generation.service import GenerationError

    if args.full_size and not args.random_weights:
        raise GenerationError("--full-size is the random-weight dry run: add --random-weights")
    cuda = args.device.startswith("cuda")
    if not cuda:
        torch.set_num_threads(2)
    protocol = load_protocol(args.protocol)
    g = protocol.generation
    if args.inner_steps is not None:
        g.heuristic.inner_steps = args.inner_steps
    if args.steps is not None:
        g.sdxl.diffusion_steps = args.steps
    if args.refine_in is not None:
        g.heuristic.refine_in = args.refine_in
    g.deadline_s = 600.0
    g.reward_wait_s = 30.0
    encoder = ATMS().eval()
    target = np.random.default_rng(1).normal(size=encoder.config.embed_dim)
    reward_fn = SemanticReward(encoder, target, ATM_CHANNELS)
    gpu = [n for n, spec in BACKENDS.items() if spec.needs_gpu]
    if args.backends:
        names = args.backends.split(",")
    elif cuda:
        names = gpu
    else:  # the CPU stand-ins, and each GPU backend's code path at a tiny size
        stand_ins = [n for n, spec in BACKENDS.items() if spec.stand_in]
        names = [] if args.full_size else stand_ins + [n + TINY for n in gpu]
    gp = gp_500()
    result: dict = {
        "benchmark": "generation",
        "device": args.device,
        "inner_steps": g.heuristic.inner_steps,
        "refine_in": g.heuristic.refine_in,
        "lightning_steps": g.sdxl.diffusion_steps,
        "reward": "semantic: random ATM-S encoder + random target (timing only)",
        **gp,
        "backends": {},
    }
    dry_backend = None
    if args.full_size:
        dry_backend, dry = dry_run(
            protocol,
            device=args.device,
            dtype=g.dtype,
            size=args.dry_run_size,
            steps=args.dry_run_steps,
            weights_dir=args.weights_dir,
        )
        result["full_size_dry_run"] = dry
    else:
        dry = None
    result["round_budget"] = round_budget(protocol, gp["gp_500_gradient_ms"], dry)
    tmp = tempfile.TemporaryDirectory(prefix="eegs-bench-gen-")
    try:
        for name in names:
            t0 = time.perf_counter()
            try:
                backend, pool = _build(name, args, protocol, Path(tmp.name), dry_backend)
            except BackendUnavailableError as err:
                raise GenerationError(f"backend {name}: {err}") from None
            load_s = time.perf_counter() - t0
            res = measure_backend(name, backend, pool, protocol, reward_fn, (4, 8), args.trial_s)
            res["load_s"] = round(load_s, 2)
            if name in gpu:
                res["image_size"] = args.size
                res["weights"] = "RANDOM (timing only)" if args.random_weights else "pretrained"
                res["device_name"] = torch.cuda.get_device_name() if cuda else "cpu"
                if cuda:
                    res["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
            result["backends"][name] = res
            del backend, pool
    finally:
        tmp.cleanup()
    b = result["backends"]
    if b:
        result["overhead_fraction"] = max(
            r["overhead_fraction"] for v in b.values() for r in v["rounds"].values()
        )
        result["batched_speedup_vs_sequential"] = {
            k: v["batched_speedup_vs_sequential"] for k, v in b.items()
        }
    measured = [n for n in gpu if n in b]
    if measured:
        result["batch4_ready_after_last_reward_s"] = round(
            b[measured[0]]["rounds"]["4"]["ready_after_last_reward_ms"] / 1e3, 3
        )
    return result


#: A GPU backend's name with this suffix: its tiny random variant, on the CPU.
TINY = "-tiny"


def _build(name: str, args, protocol, tmp: Path, loaded=None):
    """Backend ``name`` (a registered one, or ``NAME-tiny``) and its stimulus pool."""
    from models.backends.base import backend_class
    from models.backends.pool import ImagePool

    g = protocol.generation
    steps = g.sdxl.diffusion_steps
    if name.endswith(TINY):
        cls = backend_class(name.removesuffix(TINY))
        backend = cls.tiny_random(channels=(32, 64), layers=2, size=64, steps=steps)
        folder = _image_folder(tmp, 32, 64)
    else:
        g.device = args.device
        g.sdxl.width = g.sdxl.height = args.size
        if loaded is not None:  # the dry run's backend, loaded through the lab's path
            backend = loaded
            backend.width = backend.height = args.size
            backend.steps = steps
        else:
            backend = backend_class(name).from_settings(g, random_weights=args.random_weights)
        own = backend.stimulus_pool(g)
        if own is not None:  # its own pool (the procedural renders): no warm-up needed
            return backend, own
        folder = _image_folder(tmp, 32, 512)
    backend.warmup(batch=4)
    pool = ImagePool.from_folder(folder, backend.embed, backend.name)
    return backend, pool
