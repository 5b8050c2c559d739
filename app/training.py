"""The CLIP training run of ``eegs train-encoder``: checkpointed every epoch, resumable.

Library code that the command (:mod:`app.commands.train_encoder`, which reads the data)
and ``eegs bench decoders`` (its 5-minute retrieval budget) both run.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np

#: The file in OUT that ``--resume`` continues from.
CHECKPOINT = "checkpoint.pt"


def _fingerprint(train, test) -> str:
    import hashlib

    h = hashlib.sha256()
    for arr in (train.eeg[:50], train.image_index, train.embeddings[:50], test.eeg[:50]):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(repr((train.eeg.shape, test.eeg.shape)).encode())
    return h.hexdigest()[:16]


def _epochs_this_run(trainer, first: int) -> int:
    """Epochs trained in this run (at least 1)."""
    return max(1, trainer.epoch - first)


def train_encoder(
    train,
    test,
    training,
    out: Path,
    *,
    epochs: int,
    resume: bool = False,
    init: Path | None = None,
    device: str = "cpu",
    seed: int = 0,
    max_seconds: float | None = None,
    progress: bool = True,
    description: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or continue) CLIP training, checkpointing every epoch; returns the summary."""
    import torch
    from tqdm import tqdm

    from models.decoders.atms import ATMS, ATMSConfig, CheckpointError, load_atms, save_atms
    from models.decoders.atms import read_torch_checkpoint as read_ckpt
    from models.decoders.clip_training import ClipTrainer
    from workers.errors import InputError
    from workers.session_store import atomic_write_bytes, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    n_ch, n_t = train.eeg.shape[1:]
    if test.embeddings.shape[1] != train.embeddings.shape[1]:
        raise InputError("train and test embeddings have different dimensions")
    fingerprint = _fingerprint(train, test)
    try:
        if init is not None:
            model = load_atms(init, n_channels=n_ch, n_times=n_t)
        else:
            torch.manual_seed(seed)
            model = ATMS(
                ATMSConfig(n_channels=n_ch, n_times=n_t, embed_dim=train.embeddings.shape[1])
            )
    except CheckpointError as err:
        raise InputError(str(err)) from None
    if model.config.embed_dim != train.embeddings.shape[1]:
        raise InputError(
            f"encoder outputs {model.config.embed_dim}-d, embeddings are "
            f"{train.embeddings.shape[1]}-d"
        )
    trainer = ClipTrainer(
        model,
        lr=training.lr,
        weight_decay=training.weight_decay,
        batch_size=training.batch_size,
        seed=seed,
        device=device,
    )
    best = -1.0
    if ckpt_path.exists():
        if not resume:
            raise InputError(f"{ckpt_path} exists: pass --resume to continue it, or another --out")
        try:
            state = read_ckpt(ckpt_path)
        except CheckpointError as err:
            raise InputError(str(err)) from None
        if state.get("fingerprint") != fingerprint:
            raise InputError(f"{ckpt_path} was trained on other data; use another --out")
        if state.get("config") != model.config.to_json():
            raise InputError(f"{ckpt_path} holds another architecture: {state.get('config')}")
        trainer.load_state_dict(state)
        best = float(state.get("best_top1", -1.0))
        print(f"resuming after epoch {trainer.epoch} of {epochs}")
    else:
        trainer.set_input_statistics(train.eeg)
    ks = sorted({min(k, len(np.unique(test.image_index))) for k in training.retrieval_k})
    t_start = time.perf_counter()
    first = trainer.epoch
    while trainer.epoch < epochs:
        bar = tqdm(
            total=len(train.eeg),
            desc=f"epoch {trainer.epoch + 1}/{epochs}",
            unit="ep",
            disable=not progress,
            leave=False,
        )

        def tick(n: int, loss: float, bar=bar) -> None:
            bar.update(n)
            bar.set_postfix(loss=f"{loss:.3f}")

        t0 = time.perf_counter()
        loss = trainer.train_epoch(train, tick)
        bar.close()
        ret = trainer.evaluate(test, ks, seed=seed)
        rec = {
            "epoch": trainer.epoch,
            "loss": round(loss, 5),
            "seconds": round(time.perf_counter() - t0, 2),
            "retrieval": ret,
        }
        rec["elapsed_s"] = round(time.perf_counter() - t_start, 2)  # this run, with evaluation
        trainer.history.append(rec)
        top = max(ks)
        top1 = ret[f"{top}way"]["top1"]
        top5 = ret[f"{top}way"].get("top5")
        print(
            f"epoch {trainer.epoch}/{epochs}: loss {loss:.4f}, {top}-way top-1 "
            f"{top1:.3f}"
            + (f" top-5 {top5:.3f}" if top5 is not None else "")
            + f" (chance {1 / top:.3f})",
            flush=True,
        )
        meta = {"epoch": str(trainer.epoch), "top1": f"{top1:.4f}", "k": str(top)}
        save_atms(model, out / "encoder.safetensors", **meta)
        if top1 > best:
            best = top1
            save_atms(model, out / "best.safetensors", **meta)
        state = trainer.state_dict()
        state.update(fingerprint=fingerprint, config=model.config.to_json(), best_top1=best)
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(ckpt_path, buf.getvalue())
        atomic_write_json(
            out / "history.json", {"data": description or {}, "history": trainer.history}
        )
        elapsed = time.perf_counter() - t_start
        if (
            max_seconds is not None
            and elapsed + (elapsed / _epochs_this_run(trainer, first)) > max_seconds
        ):
            print(f"stopping: another epoch would pass the {max_seconds:.0f} s budget")
            break
    last = trainer.history[-1] if trainer.history else {}
    return {
        "epochs_done": trainer.epoch,
        "train_trials": int(len(train.eeg)),
        "test_images": int(len(np.unique(test.image_index))),
        "seconds_this_run": round(time.perf_counter() - t_start, 1),
        "last": last,
        "best_top1": best,
        "encoder": str(out / "encoder.safetensors"),
    }
