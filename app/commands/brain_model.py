"""Simulated participant: stream EEG over LSL that reacts to the images actually shown.

Streams background EEG (1/f, posterior alpha, optional line noise and blinks) from a
sample clock like an amplifier, reads the session's marker stream, and for each
stimulus-onset marker loads the image it names and adds the simulated subject's
visual and affective response. `eegs brain-model oracle IMAGE...` prints the hidden
affect of images for a subject: for evaluation only, never for the loop. Options
override the protocol's [brain_model] section (see experiment_protocols/default.toml).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.commands._common import add_protocol_argument, protocol_from_args
from experiment_protocols.brain_model import REALISM_LEVELS, SUBJECT_FAMILIES

NAME = "brain-model"
HELP = "simulated participant: LSL EEG that reacts to the images shown"
POLLS_STOP = True  # SIGTERM/Ctrl-C: stop cleanly (app.shutdown)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options and the ``oracle`` action."""
    add_protocol_argument(p)
    p.add_argument("--name", metavar="NAME", help="EEG stream name (protocol: streams.eeg)")
    p.add_argument("--markers", metavar="NAME", help="marker stream to read (streams.markers)")
    p.add_argument(
        "--responses",
        metavar="NAME",
        help="answer the rating screen on this LSL response-box stream "
        "(presentation.response_stream; '' = do not answer)",
    )
    p.add_argument("--subject-seed", type=int, metavar="N", help="which simulated subject")
    p.add_argument(
        "--family",
        choices=tuple(SUBJECT_FAMILIES),
        help="which components carry the subject's affect (brain_model.family; the hidden "
        "affect is the same in every family)",
    )
    p.add_argument(
        "--realism",
        choices=tuple(REALISM_LEVELS),
        help="how much of the hidden affect one trial carries (brain_model.realism: lab, as "
        "decodable as real recordings; clean, the uncalibrated model)",
    )
    p.add_argument("--seed", type=int, metavar="N", help="seed of the background noise")
    p.add_argument(
        "--channels", metavar="LIST", help="'64', 'atm17' or comma-separated 10-05 names"
    )
    p.add_argument("--sfreq", type=float, metavar="HZ", help="sampling rate (250/500/1000)")
    p.add_argument("--chunk", type=float, metavar="S", help="seconds per LSL chunk")
    p.add_argument("--snr", type=float, help="response RMS / background RMS")
    p.add_argument("--response-uv", type=float, metavar="UV", help="response RMS (µV)")
    p.add_argument("--line-noise-uv", type=float, metavar="UV", help="line noise amplitude")
    p.add_argument("--line-noise-hz", type=float, metavar="HZ", help="mains frequency")
    p.add_argument("--blinks-per-min", type=float, metavar="N", help="blink rate")
    p.add_argument(
        "--photodiode", action="store_true", default=None, help="add a Photodiode channel"
    )
    p.add_argument("--photodiode-lag-ms", type=float, metavar="MS", help="display lag")
    p.add_argument("--photodiode-jitter-ms", type=float, metavar="MS", help="display lag sd")
    p.add_argument(
        "--photodiode-duration-s", type=float, metavar="S", help="on-time without offset marker"
    )
    p.add_argument("--image-root", metavar="DIR", help="folder of relative image paths")
    p.add_argument("--learned-model", metavar="FILE", help="safetensors image-to-EEG model")
    p.add_argument("--learned-class", metavar="MOD:CLS", help="class of the learned model")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    o = sub.add_parser(
        "oracle",
        help="print the hidden affect of images (evaluation only)",
        description="Print each image's hidden (valence, arousal) for one simulated "
        "subject. Valence is in (-1, 1), arousal in (0, 1). For evaluation only: "
        "nothing in the closed loop may use it.",
    )
    o.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    o.add_argument("--json", action="store_true", help="print a JSON list")
    o.add_argument(
        "--subject-seed", type=int, default=argparse.SUPPRESS, metavar="N", help="subject"
    )


def _protocol(args: argparse.Namespace):
    channels = None
    if args.channels is not None:
        from workers.brain_model import channel_list

        channels = channel_list(args.channels)
    bm = {
        "subject_seed": args.subject_seed,
        "family": args.family,
        "noise_seed": args.seed,
        "channels": channels,
        "sfreq": args.sfreq,
        "chunk_s": args.chunk,
        "snr": args.snr,
        "response_uv": args.response_uv,
        "line_noise_uv": args.line_noise_uv,
        "line_noise_hz": args.line_noise_hz,
        "blinks_per_min": args.blinks_per_min,
        "photodiode": args.photodiode,
        "photodiode_lag_ms": args.photodiode_lag_ms,
        "photodiode_jitter_ms": args.photodiode_jitter_ms,
        "photodiode_duration_s": args.photodiode_duration_s,
        "image_root": args.image_root,
        "learned_model": args.learned_model,
        "learned_class": args.learned_class,
    }
    overrides = {f"brain_model.{k}": v for k, v in bm.items()}
    overrides.update({"streams.eeg": args.name, "streams.markers": args.markers})
    overrides["presentation.response_stream"] = args.responses
    protocol = protocol_from_args(args, overrides)
    if args.realism is not None:
        protocol = protocol.with_overrides(
            {"brain_model": protocol.brain_model.at_realism(args.realism)}
        )
    return protocol


def run(args: argparse.Namespace) -> int:
    """Stream until --duration passes or the process is stopped; or run the oracle."""
    protocol = _protocol(args)
    if args.action == "oracle":
        from workers.brain_model import oracle

        rows = oracle(args.images, protocol.brain_model.subject_seed)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                print(
                    f"{row['image']}\tvalence {row['valence']:+.3f}\tarousal {row['arousal']:.3f}"
                )
        return 0

    from app.shutdown import STOP
    from workers.brain_model import BrainModelConfig
    from workers.brain_model import run as run_brain_model

    config = BrainModelConfig(
        settings=protocol.brain_model,
        name=protocol.streams.eeg,
        markers=protocol.streams.markers,
        duration_s=args.duration,
        responses=protocol.presentation.response_stream,
        rating_scale=(protocol.presentation.ratings.low, protocol.presentation.ratings.high),
    )
    stats = run_brain_model(config, stop=STOP.is_set)
    print(
        f"streamed {stats.samples} samples; {stats.responses} responses, "
        f"{stats.image_errors} unreadable images"
    )
    return 0
