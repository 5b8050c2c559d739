"""The poster's Table 1 on the brain model: baseline set vs EEGS-generated set.

For each simulated subject, runs the closed loop offline (or takes a pilot session's
dataset), records fresh EEG for the EEGS set and for as many images of the normative
baseline set, cross-validates ATM-S-FC and EEGNet, and writes DIR/table1.md,
table1.csv, table1.json (every fold's predictions, the per-seed figures, the verdict),
confusion matrices and per-subject recordings (seed-S/*.npz, readable by
``eegs evaluate``). See :mod:`app.evaluation.table1` for the design.

Defaults are sized for a 2-core CPU: 50 training epochs per fit (the protocol says
150) and one CV seed (5 folds) per subject and set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands._common import add_classifiers_argument, add_protocol_argument
from app.reward_option import add_reward_argument

NAME = "reproduce-table1"
HELP = "the poster's Table 1 on the brain model: baseline vs EEGS-generated set"
POLLS_STOP = True  # SIGTERM/Ctrl-C: stop cleanly (app.shutdown)


def _int_list(text: str) -> list[int]:
    try:
        if ".." in text:
            lo, hi = text.split("..")
            return list(range(int(lo), int(hi) + 1))
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 0,1,2 or 0..4, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    add_protocol_argument(p, "pilot.toml")
    p.add_argument(
        "--seeds",
        type=_int_list,
        default=list(range(5)),
        metavar="LIST",
        help="simulated subjects, e.g. 0,1,2 or 0..4 (default 0..4)",
    )
    p.add_argument(
        "--sessions",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="take the EEGS set from these pilot sessions' dataset/ instead of running "
        "the loop (one subject each; --seeds, --rounds, --n-images, --reward unused)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        metavar="N",
        help="closed-loop rounds, round 0 included (default: the protocol's closed-loop block)",
    )
    p.add_argument(
        "--n-images",
        type=int,
        default=None,
        metavar="N",
        help="images per set and subject, even (default: rounds x the block's images per round)",
    )
    add_reward_argument(p)
    add_classifiers_argument(p)
    p.add_argument(
        "--epochs", type=int, default=50, metavar="N", help="training epochs per fit (default 50)"
    )
    p.add_argument("--folds", type=int, default=None, metavar="K", help="CV folds (protocol's)")
    p.add_argument(
        "--cv-seeds",
        type=_int_list,
        default=[0],
        metavar="LIST",
        help="repeats of the k-fold with these seeds (default 0)",
    )
    p.add_argument(
        "--encoder", metavar="FILE", help="ATM-S checkpoint (default: random-init encoder)"
    )


def run(args: argparse.Namespace) -> int:
    """Check the options, run :func:`app.evaluation.table1.reproduce`, print the table."""
    from typing import get_args

    from app.evaluation.table1 import Config, closed_loop_shape
    from app.pilot import PILOT_PROTOCOL
    from experiment_protocols import load_protocol
    from experiment_protocols.decoder import Decoder
    from workers.errors import InputError

    protocol = load_protocol(args.protocol or PILOT_PROTOCOL)
    dec = protocol.decoder
    known = get_args(Decoder.model_fields["classifier"].annotation)  # no torch import yet
    kinds = [k.strip() for k in args.classifiers.split(",") if k.strip()]
    bad = [k for k in kinds if k not in known]
    if bad or not kinds:
        raise InputError(f"--classifiers: unknown {bad}; expected some of {sorted(known)}")
    if args.epochs < 1:
        raise InputError(f"--epochs must be >= 1, got {args.epochs}")
    dec.atms_fc.epochs = dec.eegnet.epochs = args.epochs
    if args.folds is not None:
        if args.folds < 2:
            raise InputError(f"--folds must be >= 2, got {args.folds}")
        dec.evaluation.folds = args.folds
    if not args.cv_seeds:
        raise InputError("--cv-seeds: give at least one seed")
    dec.evaluation.seeds = args.cv_seeds
    if args.encoder:
        if not Path(args.encoder).is_file():
            raise InputError(f"--encoder {args.encoder}: no such file")
        dec.encoder_checkpoint = str(args.encoder)
    rounds, per_round = closed_loop_shape(protocol)
    rounds = rounds if args.rounds is None else args.rounds
    n_images = rounds * per_round if args.n_images is None else args.n_images
    if not args.sessions:
        if not args.seeds:
            raise InputError("--seeds: give at least one simulated subject")
        if len(set(args.seeds)) != len(args.seeds):
            raise InputError(f"--seeds: {args.seeds} lists a seed twice")
        if rounds < 1:
            raise InputError(f"--rounds must be >= 1, got {rounds}")
        if n_images < max(4, 2 * dec.evaluation.folds) or n_images % 2:
            raise InputError(
                f"--n-images must be even and >= {max(4, 2 * dec.evaluation.folds)} "
                f"(two classes x {dec.evaluation.folds} folds), got {n_images}"
            )
        if n_images < 2 * rounds:
            raise InputError(
                f"--n-images {n_images}: the loop needs >= 2 images per round ({rounds} rounds)"
            )
    if args.out.exists() and any(args.out.iterdir()):
        raise InputError(f"{args.out} exists and is not empty: choose a new --out")
    cfg = Config(
        out=args.out,
        protocol=protocol,
        seeds=args.seeds,
        rounds=rounds,
        n_images=n_images,
        kinds=kinds,
        reward=args.reward or protocol.generation.reward.mode,
        sessions=list(args.sessions or []),
    )
    from experiment_protocols.rewards import modes_without_files

    if cfg.reward not in modes_without_files():
        raise InputError(
            f"the protocol's reward mode {cfg.reward!r} cannot run offline; use --reward"
        )
    from app.evaluation.table1 import reproduce
    from models.decoders.atms import CheckpointError
    from models.decoders.classifiers import ClassifierError

    try:
        result = reproduce(cfg)
    except (CheckpointError, ClassifierError) as err:
        raise InputError(str(err)) from None
    print((args.out / "table1.md").read_text())
    print(f"wrote {args.out}/table1.md, table1.csv, table1.json in {result['wall_s']:.0f} s")
    return 0
