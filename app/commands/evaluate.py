"""``eegs evaluate``: Table 1 from labelled recordings.

The library it drives is :mod:`app.evaluation.cross_validation`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from app.commands._common import (
    add_classifiers_argument,
    add_protocol_argument,
    protocol_from_args,
)
from app.evaluation.cross_validation import (
    cross_validate,
    load_labelled,
    plot_confusions,
    save_decoder,
    summarise,
    write_table,
)

NAME = "evaluate"
HELP = "cross-validate the emotion decoders and write Table 1"

log = logging.getLogger("eegs.evaluate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    add_protocol_argument(p)
    p.add_argument(
        "--dataset",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME", "PATH"),
        help="a stimulus set: its name, then session directories and/or .npz files "
        "(repeat for each dataset)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    add_classifiers_argument(p)
    p.add_argument(
        "--encoder", metavar="FILE", help="ATM-S checkpoint (decoder.encoder_checkpoint)"
    )
    p.add_argument("--folds", type=int, metavar="K", help="decoder.evaluation.folds")
    p.add_argument(
        "--seeds", metavar="LIST", help="comma-separated seeds (decoder.evaluation.seeds)"
    )
    p.add_argument("--epochs", type=int, metavar="N", help="training epochs of every classifier")
    p.add_argument(
        "--save-decoder",
        type=Path,
        metavar="FILE",
        help="also fit decoder.classifier on every labelled epoch of the first dataset and "
        "save it (a calibration decoder for generation.reward.decoder)",
    )
    p.add_argument("--no-cv", action="store_true", help="with --save-decoder: skip the table")


def run(args: argparse.Namespace) -> int:
    """Load every dataset, cross-validate, write the table, figures and fold JSON."""
    import torch
    from tqdm import tqdm

    from models.decoders.atms import CheckpointError, load_atms
    from models.decoders.classifiers import CLASSIFIERS, ClassifierError
    from workers.errors import InputError
    from workers.session_store import atomic_write_json

    protocol = protocol_from_args(args, {})
    dec = protocol.decoder
    if args.encoder:
        dec.encoder_checkpoint = args.encoder
    if args.folds is not None:
        dec.evaluation.folds = args.folds
    if args.seeds:
        dec.evaluation.seeds = [int(s) for s in args.seeds.split(",")]
    if args.epochs is not None:
        dec.atms_fc.epochs = args.epochs
        dec.eegnet.epochs = args.epochs
    kinds = [k.strip() for k in args.classifiers.split(",") if k.strip()]
    bad = [k for k in kinds if k not in CLASSIFIERS]
    if bad or not kinds:
        raise InputError(f"--classifiers: unknown {bad}; expected some of {sorted(CLASSIFIERS)}")
    for spec in args.dataset:
        if len(spec) < 2:
            raise InputError(f"--dataset {' '.join(spec)}: give a name and at least one path")
    if dec.threads:
        torch.set_num_threads(dec.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    if args.no_cv and not args.save_decoder:
        raise InputError("--no-cv only makes sense with --save-decoder")
    if args.save_decoder:
        save_decoder(args.dataset[0], dec, args.save_decoder)
        if args.no_cv:
            return 0

    records: list[dict[str, Any]] = []
    notes: list[str] = []
    datasets_info = {}
    for name, *paths in args.dataset:
        data = load_labelled([Path(p) for p in paths], dec)
        encoder = None
        try:
            if "atms_fc" in kinds and dec.encoder_checkpoint:
                encoder = load_atms(
                    dec.encoder_checkpoint, n_channels=data.X.shape[1], n_times=data.X.shape[2]
                )
            print(
                f"{name}: {len(data.y)} epochs ({int((data.y == 0).sum())} sadness, "
                f"{int(data.y.sum())} amusement), {len(data.subjects)} subject(s), "
                f"{data.X.shape[1]} ch x {data.X.shape[2]} samples"
            )
            with tqdm(desc=f"{name}: folds", unit="fold", leave=False) as bar:

                def tick(rec: dict[str, Any], bar=bar) -> None:
                    bar.update(1)
                    bar.set_postfix(clf=rec["classifier"], f1_avg=f"{rec['f1_avg']:.2f}")

                recs = cross_validate(
                    data, kinds, dec, dataset=name, encoder=encoder, progress=tick
                )
        except (CheckpointError, ClassifierError) as err:
            raise InputError(str(err)) from None
        records += recs
        notes += [f"{name}: {n}" for n in data.notes]
        datasets_info[name] = {
            "paths": paths,
            "n_epochs": len(data.y),
            "n_sadness": int((data.y == 0).sum()),
            "n_amusement": int(data.y.sum()),
            "subjects": data.subjects,
            "sfreq": data.sfreq,
            "shape": list(data.X.shape[1:]),
            "ch_names": data.ch_names,
        }
    if not records:
        raise InputError("no split could be evaluated (see the notes above)")
    if "atms_fc" in kinds and not dec.encoder_checkpoint:
        notes.append(
            "ATM-S-FC used a randomly initialised frozen ATM-S encoder (no checkpoint given): "
            "a random-feature model, not the pretrained encoder of the poster"
        )
    notes.append(
        f"protocol: stratified {dec.evaluation.folds}-fold within subject"
        + (
            ", leave-one-subject-out across subjects"
            if dec.evaluation.leave_one_subject_out
            else ""
        )
        + f"; seeds {dec.evaluation.seeds}; classes 0 = {dec.negative_label}, "
        f"1 = {dec.positive_label}; window {list(dec.window_s)} s"
    )
    rows = summarise(records)
    write_table(rows, args.out, notes)
    pngs = plot_confusions(records, args.out)
    atomic_write_json(
        args.out / "folds.json",
        {
            "classes": ["sadness", "amusement"],
            "decoder": dec.model_dump(mode="json"),
            "protocol_file": protocol.source,
            "datasets": datasets_info,
            "notes": notes,
            "table": rows,
            "folds": records,
        },
    )
    print((args.out / "table1.md").read_text())
    print(f"wrote {args.out / 'table1.csv'}, {len(pngs)} confusion matrices, folds.json")
    log.info("evaluated %d folds", len(records))
    return 0
