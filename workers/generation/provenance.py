"""Provenance: image ids and records, the batch reply that carries them, the files that keep them.

A finished round becomes a :class:`Batch` (the :class:`~workers.messages.ImageBatch`
and its encoded images, one :class:`ImageRecord` per image); after the reply is sent,
:class:`ProvenanceWriter` writes ``SESSION/generation/round-XX/<image id>.safetensors``
(embedding, conditioning) with a ``.json`` sidecar, and logs the ``image_batch`` event a
restarted worker reads (:mod:`workers.generation.restore`). A write that fails (a full
disk, say) is logged as ``provenance_failed``; the images were already sent.
"""

from __future__ import annotations

import io
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from safetensors.numpy import save

from experiment_protocols.generation import Generation
from models.backends.base import Backend
from models.heuristic import Candidate, HeuristicGenerator
from workers.generation.jobs import Job
from workers.generation.ledger import Log
from workers.messages import ErrorReply, ImageBatch, ImageInfo, array_spec
from workers.session_store import SessionStore, atomic_write_bytes, atomic_write_json

logger = logging.getLogger("eegs.generation")

GENERATION_DIR = "generation"
KIND_LETTER = {"initial": "i", "child": "c", "nearest": "n", "random": "x"}


@dataclass
class ImageRecord:
    """One sent image: its id, the candidate it came from, its provenance, its file."""

    image_id: str
    candidate: Candidate
    provenance: dict[str, Any]
    rel: str  # the embedding's file, relative to the session


@dataclass
class Batch:
    """A round's reply and what is written for it once sent."""

    message: ImageBatch
    arrays: list[np.ndarray]
    records: list[ImageRecord]

    @property
    def round(self) -> int:
        """The request's round."""
        return self.message.round


def encode_image(image: Image.Image, settings: Generation) -> np.ndarray:
    """An image as the reply carries it: raw RGB or PNG bytes (``generation.image_encoding``)."""
    rgb = image.convert("RGB")
    if settings.image_encoding == "rgb":
        return np.asarray(rgb, dtype=np.uint8)
    buf = io.BytesIO()
    rgb.save(buf, format="PNG", compress_level=settings.png_compress_level)
    return np.frombuffer(buf.getvalue(), np.uint8)


def assemble_batch(
    job: Job, missed: bool, backend: Backend, settings: Generation
) -> Batch | ErrorReply:
    """The reply to a due job: its ready images with ids and provenance, or why none."""
    t_reply = time.monotonic()
    t0 = time.perf_counter()
    req = job.request
    with job.lock:
        ready = list(job.ready)
    if job.error and not ready:
        return ErrorReply(error="generation_failed", detail=job.error)
    if not ready:
        return ErrorReply(
            error="deadline",
            detail=f"no image was ready within {job.deadline - job.t_received:.2f} s",
        )
    token = secrets.token_hex(3)
    infos, arrays, records = [], [], []
    counts: dict[str, int] = {}
    for c, t_ready in ready:
        letter = KIND_LETTER.get(c.kind, "o")
        j = counts.get(letter, 0)
        counts[letter] = j + 1
        image_id = f"r{req.round:02d}-{letter}{j:02d}-{token}"
        rel = f"{GENERATION_DIR}/round-{req.round:02d}/{image_id}.safetensors"
        provenance = {
            "kind": c.kind,
            "round": req.round,
            "seed": c.seed,
            "parents": c.parents,
            "pool_id": c.pool_id,
            "crossover": list(c.crossover) if c.crossover else None,
            "inner_steps": c.inner_steps if c.kind == "child" else 0,
            "embedding": rel,
            "backend": backend.name,
            "model_ids": backend.model_ids,
            "wall_time_s": round(t_ready - job.t_started, 4),
            "procedural_params": c.image.info.get("eegs_params"),
            "deadline_missed": missed,
        }
        infos.append(ImageInfo(image_id=image_id, provenance=provenance))
        arrays.append(encode_image(c.image, settings))
        records.append(ImageRecord(image_id, c, provenance, rel))
    serialise_ms = (time.perf_counter() - t0) * 1e3
    timing = dict(job.timing_ms)
    t_end = job.t_done if job.t_done is not None else t_reply
    timing.update(
        wait_rewards_ms=round((job.t_started - job.t_received) * 1e3, 3),
        round_ms=round((t_end - job.t_started) * 1e3, 3),
        reply_delay_ms=round((t_reply - t_end) * 1e3, 3),
        serialise_ms=round(serialise_ms, 3),
    )
    converged, reason = job.converged
    msg = ImageBatch(
        session=req.session,
        round=req.round,
        images=infos,
        arrays=[array_spec(a) for a in arrays],
        deadline_missed=missed,
        converged=converged,
        stop_reason=reason,
        timing_ms=timing,
    )
    return Batch(msg, arrays, records)


class ProvenanceWriter:
    """Writes a sent batch's embeddings and sidecars, then logs its ``image_batch`` event.

    Parameters
    ----------
    store
        The session directory; None writes no files (the event still goes to ``log``).
    log
        ``log(event, **fields)`` into the session's events.
    """

    def __init__(self, store: SessionStore | None, log: Log) -> None:
        self.store = store
        self._log = log

    def write_files(self, batch: Batch) -> None:
        """Each image's embedding (and conditioning) and its provenance sidecar."""
        if self.store is None:
            return
        for r in batch.records:
            c = r.candidate
            tensors = {"embedding": np.asarray(c.embedding, np.float32).reshape(-1)}
            if c.conditioning is not None:
                tensors["conditioning"] = np.asarray(c.conditioning, np.float32).reshape(-1)
            path = self.store.root / r.rel
            atomic_write_bytes(path, save(tensors))
            atomic_write_json(path.with_suffix(".json"), {"image_id": r.image_id, **r.provenance})

    def write(self, batch: Batch, generator: HeuristicGenerator) -> bool:
        """Files and the ``image_batch`` event; False (logged, not raised) if either failed."""
        ok = True
        try:
            self.write_files(batch)
        except Exception as err:  # the images were sent: the session goes on without them
            ok = False
            self._failed(batch, "files", err)
        try:
            self._log(
                "image_batch",
                round=batch.round,
                n_images=len(batch.records),
                deadline_missed=batch.message.deadline_missed,
                image_ids=[r.image_id for r in batch.records],
                timing_ms=batch.message.timing_ms,
                best_by_round=list(generator.best_by_round),
                generator_round=generator.round,
            )
        except Exception as err:
            ok = False
            self._failed(batch, "event", err)
        return ok

    def _failed(self, batch: Batch, what: str, err: Exception) -> None:
        logger.exception("provenance of round %d not written (%s)", batch.round, what)
        try:
            self._log(
                "provenance_failed",
                round=batch.round,
                what=what,
                error=f"{type(err).__name__}: {err}",
            )
        except Exception:  # noqa: BLE001 - the events file itself is what failed
            logger.warning("provenance_failed not logged either")
