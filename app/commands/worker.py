"""Run the generation worker: EEG epochs in, rewards and the next images out.

Loads the protocol's backend once (procedural on a CPU, SDXL-Lightning + IP-Adapter on
a GPU, or a folder pool), warms it up, prints "ready ENDPOINT", then serves a ZeroMQ
ROUTER socket until stopped: epochs get rewards, image requests get image batches with
their provenance. Loopback by default; another interface needs CURVE keys
(network.curve_*). Options override the protocol's [generation] section.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands._common import add_protocol_argument, protocol_from_args
from experiment_protocols.generation import BACKENDS

NAME = "worker"
HELP = "run the generation worker (rewards + next images over ZeroMQ)"
POLLS_STOP = True  # SIGTERM/Ctrl-C: stop cleanly (app.shutdown)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    add_protocol_argument(p)
    p.add_argument("--session", type=Path, required=True, metavar="DIR", help="session directory")
    p.add_argument("--endpoint", metavar="URL", help="ROUTER endpoint (generation.endpoint)")
    p.add_argument("--backend", choices=tuple(BACKENDS), help="generation.backend")
    p.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:N, auto (generation.device)")
    p.add_argument("--pool", metavar="DIR", help="stimulus image folder (generation.pool.folder)")
    p.add_argument(
        "--subscribe-epochs",
        action="store_true",
        help="also reward every epoch published by `eegs acquire` (network.epochs_endpoint)",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="sdxl: full-size models with RANDOM weights (timing without downloads)",
    )
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")


def run(args: argparse.Namespace) -> int:
    """Serve until stopped."""
    from app.shutdown import STOP
    from experiment_protocols import load_protocol
    from workers.generation.service import GenerationConfig
    from workers.generation.service import run as run_generation

    overrides = {
        "generation.endpoint": args.endpoint,
        "generation.backend": args.backend,
        "generation.device": args.device,
        "generation.subscribe_epochs": True if args.subscribe_epochs else None,
    }
    if args.pool is not None:
        pool = load_protocol(args.protocol).generation.pool.model_dump()
        overrides["generation.pool"] = {**pool, "folder": str(args.pool)}
    config = GenerationConfig(
        protocol=protocol_from_args(args, overrides),
        session_dir=args.session,
        duration_s=args.duration,
        random_weights=args.random_weights,
    )
    service = run_generation(config, stop=STOP.is_set)
    if service is not None:
        print(f"served {service.generator.round} rounds, {service.n_observations} rewards")
    return 0
