"""Train the ATM-S EEG encoder with the symmetric CLIP loss on (epoch, image embedding) pairs.

Data, one of:

- session directories (``--session``): every stored epoch whose marker names an
  "image", paired with that image's row in ``--image-embeddings`` (an .npz with
  ``names`` and ``embeddings``; names match the marker's "image" exactly or by file
  name). ``decoder.encoder_training.holdout_images`` images are held out for testing;
- THINGS-EEG2-style arrays (``--eeg``): images x repetitions x channels x samples
  (.npy, plain array), with ``--embeddings`` (images x dim: .npy, or a .pt tensor /
  dict with "img_features" read with weights_only=True); optional ``--test-eeg`` and
  ``--test-embeddings``, otherwise images are held out;
- ``--synthetic``: EEG that is a noisy linear function of random embeddings, to check
  the pipeline and measure how fast it learns;
- ``--brain-model SUBJECT...``: procedural images shown once each to simulated subjects
  of the brain model (:mod:`models.brain.pairs`), the stand-in for THINGS-EEG2 that
  pretrains the frozen encoder of ATM-S-FC; pick subjects other than those the decoder
  is tested on. Channels: decoder.channels (all 64 when empty).

Epochs are cropped to decoder.window_s (ATM-S: 0-1 s = 250 samples at 250 Hz) and, from
sessions and the brain model, keep decoder.channels (all when it is empty). Every
epoch writes OUT/checkpoint.pt (weights, optimiser, history; read back with
weights_only=True), OUT/encoder.safetensors (the latest encoder, for
decoder.encoder_checkpoint) and OUT/best.safetensors (best held-out top-1), and
prints k-way top-1/top-5 retrieval on the held-out images (repetitions averaged).
``--resume`` continues from OUT/checkpoint.pt.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from app.commands._common import add_protocol_argument, protocol_from_args
from app.training import train_encoder

NAME = "train-encoder"
HELP = "train the ATM-S encoder with the CLIP loss (checkpointed, resumable)"

log = logging.getLogger("eegs.train_encoder")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    add_protocol_argument(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--session", type=Path, nargs="+", metavar="DIR", help="session directories")
    src.add_argument(
        "--eeg",
        type=Path,
        metavar="FILE.npy",
        help="training EEG: images x repetitions x channels x samples",
    )
    src.add_argument("--synthetic", action="store_true", help="synthetic pairs (pipeline check)")
    src.add_argument(
        "--brain-model",
        type=int,
        nargs="+",
        metavar="SUBJECT",
        help="pairs simulated by these brain-model subjects (pretraining for ATM-S-FC)",
    )
    p.add_argument(
        "--brain-model-images",
        type=int,
        default=600,
        metavar="N",
        help="images per --brain-model subject (one trial each; holdout_images held out)",
    )
    p.add_argument(
        "--image-embeddings",
        type=Path,
        metavar="FILE.npz",
        help="with --session: arrays 'names' and 'embeddings'",
    )
    p.add_argument("--embeddings", type=Path, metavar="FILE", help="with --eeg: images x dim")
    p.add_argument("--test-eeg", type=Path, metavar="FILE.npy", help="held-out EEG (--eeg)")
    p.add_argument("--test-embeddings", type=Path, metavar="FILE", help="held-out embeddings")
    p.add_argument("--sfreq", type=float, default=250.0, help="rate of --eeg arrays (Hz)")
    p.add_argument("--tmin", type=float, default=0.0, help="time of the first sample of --eeg (s)")
    p.add_argument(
        "--synthetic-images",
        type=int,
        default=1000,
        metavar="N",
        help="training images of --synthetic (200 more are held out)",
    )
    p.add_argument("--synthetic-repetitions", type=int, default=4, metavar="R")
    p.add_argument(
        "--synthetic-snr",
        type=float,
        default=0.002,
        metavar="SNR",
        help="per-sample signal/noise variance of --synthetic",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    p.add_argument("--epochs", type=int, help="decoder.encoder_training.epochs")
    p.add_argument("--batch-size", type=int, help="decoder.encoder_training.batch_size")
    p.add_argument("--lr", type=float, help="decoder.encoder_training.lr")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument(
        "--init",
        type=Path,
        metavar="FILE",
        help="start from these ATM-S weights (ours or the authors')",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        metavar="M",
        help="wall-clock budget: no epoch is started that would pass it",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# -- data ----------------------------------------------------------------------------------
def _load_embeddings(path: Path) -> np.ndarray:
    import torch

    from models.decoders.atms import CheckpointError, read_torch_checkpoint
    from workers.errors import InputError

    if not path.exists():
        raise InputError(f"{path}: embedding file does not exist")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise InputError(
                f"{path}: not a plain .npy array (pickles are refused): {err}"
            ) from None
    else:
        try:
            obj = read_torch_checkpoint(path)
        except CheckpointError as err:
            raise InputError(str(err)) from None
        if isinstance(obj, dict):
            obj = obj.get("img_features", obj.get("embeddings"))
        if not isinstance(obj, torch.Tensor):
            raise InputError(f"{path}: expected a tensor or a dict with 'img_features'")
        arr = obj.float().numpy()
    if arr.ndim != 2:
        raise InputError(f"{path}: embeddings must be (images, dim); got {arr.shape}")
    return arr.astype(np.float32)


def _load_eeg_array(path: Path, sfreq: float, tmin: float, window) -> np.ndarray:
    from models.decoders.classifiers import ClassifierError, crop_window
    from workers.errors import InputError

    if not path.exists():
        raise InputError(f"{path}: EEG file does not exist")
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as err:
        raise InputError(
            f"{path}: not a plain .npy array ({err}). The original THINGS-EEG2 files are "
            f"pickled dicts and are not unpickled here: in a trusted environment save "
            f"d['preprocessed_eeg_data'] with np.save and pass that file"
        ) from None
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise InputError(f"{path}: expected images x repetitions x channels x samples; {arr.shape}")
    try:
        return np.ascontiguousarray(crop_window(arr, sfreq, tmin, window), dtype=np.float32)
    except ClassifierError as err:
        raise InputError(f"{path}: {err}") from None


def _pairs_from_array(eeg: np.ndarray, emb: np.ndarray, what: str):
    from models.decoders.clip_training import PairedEEG
    from workers.errors import InputError

    if len(eeg) != len(emb):
        raise InputError(f"{what}: {len(eeg)} images of EEG but {len(emb)} embeddings")
    n, r = eeg.shape[:2]
    return PairedEEG(eeg.reshape(n * r, *eeg.shape[2:]), np.repeat(np.arange(n), r), emb)


def _split_images(pairs, n_holdout: int, seed: int):
    """Hold out ``n_holdout`` images (at most a fifth of them)."""
    from models.decoders.clip_training import PairedEEG
    from workers.errors import InputError

    images = np.unique(pairs.image_index)
    n_test = min(n_holdout, len(images) // 5)
    if n_test < 2:
        raise InputError(f"{len(images)} distinct images: too few to hold out a test set")
    rng = np.random.default_rng(seed)
    test_images = np.sort(rng.choice(images, n_test, replace=False))
    is_test = np.isin(pairs.image_index, test_images)

    def subset(mask):
        used = np.unique(pairs.image_index[mask])
        remap = np.full(len(pairs.embeddings), -1)
        remap[used] = np.arange(len(used))
        return PairedEEG(pairs.eeg[mask], remap[pairs.image_index[mask]], pairs.embeddings[used])

    return subset(~is_test), subset(is_test)


def _session_pairs(sessions: list[Path], emb_file: Path | None, window, channels=()):
    from app.evaluation.cross_validation import read_session_epochs
    from models.decoders.classifiers import ClassifierError, crop_window, pick_channels
    from models.decoders.clip_training import PairedEEG
    from workers.errors import InputError

    if emb_file is None:
        raise InputError("--session needs --image-embeddings FILE.npz (names, embeddings)")
    try:
        with np.load(emb_file, allow_pickle=False) as npz:
            names = [str(n) for n in npz["names"]]
            emb = npz["embeddings"].astype(np.float32)
    except (OSError, KeyError, ValueError) as err:
        raise InputError(
            f"{emb_file}: need an .npz with arrays 'names' and 'embeddings' ({err})"
        ) from None
    if len(names) != len(emb):
        raise InputError(f"{emb_file}: {len(names)} names but {len(emb)} embeddings")
    lookup = {n: i for i, n in enumerate(names)}
    lookup.update({Path(n).name: i for i, n in enumerate(names)})
    xs, idx, missing = [], [], set()
    shape = None
    for session in sessions:
        for ep in read_session_epochs(session):
            image = (ep.meta.get("marker") or {}).get("image")
            if not image:
                continue
            i = lookup.get(str(image), lookup.get(Path(str(image)).name))
            if i is None:
                missing.add(str(image))
                continue
            try:
                x = crop_window(ep.data, float(ep.meta["sfreq"]), float(ep.meta["tmin"]), window)
                x = pick_channels(x, ep.meta.get("ch_names"), list(channels))[0]
            except ClassifierError as err:
                raise InputError(f"{session}, trial {ep.trial_id}: {err}") from None
            if shape is not None and x.shape != shape:
                raise InputError(f"{session}: epoch shape {x.shape} differs from {shape}")
            shape = x.shape
            xs.append(x)
            idx.append(i)
    if missing:
        log.warning("%d shown images have no embedding (e.g. %s)", len(missing), sorted(missing)[0])
    if not xs:
        raise InputError(f"no epoch of {[str(s) for s in sessions]} names an image in {emb_file}")
    return PairedEEG(np.stack(xs).astype(np.float32), np.asarray(idx), emb)


def load_pairs(args: argparse.Namespace, training) -> tuple[Any, Any, dict[str, Any]]:
    """(train, test, description) for whichever source the options name."""
    from models.decoders.clip_training import synthetic_pairs
    from workers.errors import InputError

    window = args._window
    if args.synthetic:
        kw = dict(snr=args.synthetic_snr)
        train = synthetic_pairs(args.synthetic_images, args.synthetic_repetitions, seed=1, **kw)
        test = synthetic_pairs(200, args.synthetic_repetitions, seed=2, **kw)
        desc = {
            "source": "synthetic",
            "snr_per_sample": args.synthetic_snr,
            "repetitions": args.synthetic_repetitions,
        }
        return train, test, desc
    if args.brain_model:
        from models.brain.pairs import brain_model_pairs

        if args.brain_model_images < 1:
            raise InputError(f"--brain-model-images must be >= 1; got {args.brain_model_images}")
        pairs, names = brain_model_pairs(
            args.brain_model,
            args.brain_model_images,
            channels=args._channels,
            window_s=tuple(window),
            seed=args.seed,
        )
        train, test = _split_images(pairs, training.holdout_images, args.seed)
        desc = {
            "source": "brain-model",
            "subjects": list(args.brain_model),
            "images_per_subject": args.brain_model_images,
            "channels": names,
        }
        return train, test, desc
    if args.eeg is not None:
        if args.embeddings is None:
            raise InputError("--eeg needs --embeddings")
        train = _pairs_from_array(
            _load_eeg_array(args.eeg, args.sfreq, args.tmin, window),
            _load_embeddings(args.embeddings),
            str(args.eeg),
        )
        if args.test_eeg is not None:
            if args.test_embeddings is None:
                raise InputError("--test-eeg needs --test-embeddings")
            test = _pairs_from_array(
                _load_eeg_array(args.test_eeg, args.sfreq, args.tmin, window),
                _load_embeddings(args.test_embeddings),
                str(args.test_eeg),
            )
        else:
            train, test = _split_images(train, training.holdout_images, args.seed)
        return train, test, {"source": "arrays", "eeg": str(args.eeg)}
    pairs = _session_pairs(args.session, args.image_embeddings, window, args._channels)
    train, test = _split_images(pairs, training.holdout_images, args.seed)
    return train, test, {"source": "sessions", "sessions": [str(s) for s in args.session]}


def run(args: argparse.Namespace) -> int:
    """Load the pairs, train, and report the held-out retrieval."""
    import torch

    protocol = protocol_from_args(args, {})
    dec = protocol.decoder
    training = dec.encoder_training
    for opt, key in (("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr")):
        if getattr(args, opt) is not None:
            setattr(training, key, getattr(args, opt))
    args._window = dec.window_s
    args._channels = list(dec.channels)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dec.threads:
        torch.set_num_threads(dec.threads)
    train, test, desc = load_pairs(args, training)
    print(
        f"{len(train.eeg)} training trials of {train.eeg.shape[1]} ch x {train.eeg.shape[2]} "
        f"samples ({len(train.embeddings)} images); {len(test.embeddings)} held-out images; "
        f"device {device}"
    )
    summary = train_encoder(
        train,
        test,
        training,
        args.out,
        epochs=training.epochs,
        resume=args.resume,
        init=args.init,
        device=device,
        seed=args.seed,
        max_seconds=None if args.max_minutes is None else args.max_minutes * 60,
        progress=not args.no_progress,
        description=desc,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "last"}, indent=2))
    return 0
