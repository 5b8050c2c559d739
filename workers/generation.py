"""The generation worker (``eegs worker``): EEG rewards in, the next images out.

One long-running process that loads its models once, warms them up, then serves a
ZeroMQ ROUTER socket (loopback by default; any other interface needs CURVE, see
:mod:`workers.transport`):

- an :class:`~workers.messages.EpochMessage` is answered by a
  :class:`~workers.messages.RewardReply`: the protocol's reward function scores the
  epoch, and the reward is credited to the image the epoch's marker names (an image
  this worker sent, or any readable image file, which is then embedded);
- an :class:`~workers.messages.ImageRequest` is answered by an
  :class:`~workers.messages.ImageBatch`: the worker waits (up to
  ``generation.reward_wait_s``) for the rewards of the trials the request lists, then
  runs one round of the heuristic generator. The batch is sent when the round is done
  or when the request's deadline passes, whichever comes first; in the second case it
  holds the images that were ready (exploration images at once, children from their
  latest inner step) and says ``deadline_missed``;
- a :class:`~workers.messages.StatusRequest` is answered by a
  :class:`~workers.messages.StatusReply`;
- a :class:`~workers.messages.RatingMessage` (the participant's self-report of a trial)
  is kept for the personal reward's fit (:mod:`workers.calibration`) and not answered,
  whether it comes on the ROUTER or with the epochs on the SUB socket.

Anything else (not JSON, another schema version, oversize, invalid fields, a type the
worker does not serve) gets an :class:`~workers.messages.ErrorReply` and the worker
keeps serving. With ``generation.subscribe_epochs`` the worker also takes every epoch
that ``eegs acquire`` publishes.

A worker started on a session that already has history (``eegs resume``) first takes
over the state of the one before (:mod:`workers.generation_restore`).

Generation and the hyperparameter refit run in one background thread, so the socket
is always answered; the refit happens in idle time between rounds and yields at once to
a new request. Every image's provenance (seed, parents, embedding file, backend, model
ids, inner steps, wall time) goes into the reply and, with the embeddings, into
``SESSION/generation/round-XX/``.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import secrets
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from PIL import Image

from experiment_protocols import Protocol
from models.backends.base import Backend, BackendUnavailableError
from models.backends.pool import ImagePool
from models.heuristic import Candidate, HeuristicGenerator
from models.rewards import EpochData, RewardError, RewardFunction, as_reward
from workers import transport
from workers.calibration import (
    CALIBRATION,
    CalibratedDecoderReward,
    PersonalSessionReward,
    SessionFittedReward,
)
from workers.errors import InputError
from workers.messages import (
    EpochMessage,
    ErrorReply,
    ImageBatch,
    ImageInfo,
    ImageRequest,
    Message,
    MessageError,
    RatingMessage,
    RewardReply,
    StatusReply,
    StatusRequest,
    array_spec,
    decode,
    encode,
)
from workers.session_store import SessionStore, atomic_write_bytes, atomic_write_json

logger = logging.getLogger("eegs.generation")

GENERATION_DIR = "generation"
_KIND_LETTER = {"initial": "i", "child": "c", "nearest": "n", "random": "x"}


class GenerationError(InputError):
    """A generation setting or resource the worker cannot use; says what to fix."""


def image_roots(protocol: Protocol, store: SessionStore | None) -> list[Path]:
    """The folders a marker may name an image in: the session's, the pool's, the blocks'.

    The worker opens no other file a marker names (a marker is input from the network).
    """
    base = Path(protocol.source).resolve().parent if protocol.source else Path.cwd()
    roots = [store.root] if store is not None else []
    if protocol.generation.pool.folder:
        roots.append(Path(protocol.generation.pool.folder))
    roots += [base / b.folder for b in protocol.presentation.blocks if b.folder]
    return [r.expanduser().resolve() for r in roots]


def _inside(path: str, roots: list[Path]) -> bool:
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return any(resolved.is_relative_to(root) for root in roots)


@dataclass
class GenerationConfig:
    """What one ``eegs worker`` process does."""

    protocol: Protocol
    session_dir: Path
    duration_s: float | None = None
    random_weights: bool = False


# -- building the models ----------------------------------------------------------------
def build_backend(protocol: Protocol, *, random_weights: bool = False) -> Backend:
    """The backend the protocol names, loaded once."""
    g = protocol.generation
    if g.backend == "procedural":
        from models.backends.procedural import ProceduralBackend

        p = g.procedural
        return ProceduralBackend(p.size, p.fit_samples, p.ridge_alpha, seed=g.seed)
    if g.backend == "pool":
        from models.backends.pool import PoolBackend

        return PoolBackend(g.pool.folder, g.pool.cache_file, g.pool.extensions)
    if not random_weights:
        from models.backends.sdxl_weights import check_weights

        check_weights(g.sdxl)  # before torch's model libraries load: one clear error
    from models.backends.sdxl import SDXLBackend

    if random_weights:
        return SDXLBackend.random_full_size(g.sdxl, g.device, g.dtype, g.compile, seed=g.seed)
    return SDXLBackend.from_pretrained(g.sdxl, g.device, g.dtype, g.compile)


def build_pool(protocol: Protocol, backend: Backend) -> ImagePool:
    """The stimulus pool in the backend's embedding space."""
    g = protocol.generation
    if g.backend == "procedural" and not g.pool.folder:
        from models.backends.procedural import procedural_pool

        return procedural_pool(backend, g.procedural.pool_size, seed=g.seed)
    if g.backend == "pool":
        return backend.pool
    return ImagePool.from_folder(
        g.pool.folder,
        backend.embed,
        f"{backend.name}:{sorted(backend.model_ids.items())}",
        cache_file=g.pool.cache_file,
        extensions=g.pool.extensions,
    )


# -- bookkeeping ------------------------------------------------------------------------
@dataclass
class Issued:
    """An image this worker sent: what the GP needs when its reward arrives."""

    embedding: np.ndarray
    round: int
    provenance: dict[str, Any]


@dataclass
class _Job:
    """One image request, from arrival to reply."""

    request: ImageRequest
    envelope: list[bytes]
    t_received: float
    deadline: float
    wait_until: float
    started: bool = False
    t_started: float = 0.0
    ready: list[tuple[Candidate, float]] = field(default_factory=list)  # (image, ready at)
    first_seen: dict[int, float] = field(default_factory=dict)
    inner_steps: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    cut_by_deadline: bool = False  # the generator stopped early because the deadline came
    error: str | None = None
    t_done: float | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)
    converged: tuple[bool, str] = (False, "")
    lock: threading.Lock = field(default_factory=threading.Lock)


def _envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split ROUTER frames into (identity + delimiter, payload)."""
    if len(frames) > 1 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]


class GenerationService:
    """The worker's state and request handling; :meth:`serve` is its loop.

    Parameters
    ----------
    protocol
        The session protocol (``generation`` section).
    backend, pool
        Built once (see :func:`build_backend`, :func:`build_pool`).
    reward_fn
        Epoch -> reward in [0, 1] (see :mod:`models.rewards`).
    store
        Session directory for events, embeddings and provenance; None = no files.
    """

    def __init__(
        self,
        protocol: Protocol,
        backend: Backend,
        pool: ImagePool,
        reward_fn: RewardFunction,
        store: SessionStore | None = None,
    ) -> None:
        self.protocol = protocol
        self.g = protocol.generation
        self.backend = backend
        self.pool = pool
        self.reward_fn = reward_fn
        self.store = store
        self.generator = HeuristicGenerator(self.g.heuristic, self.g.gp, backend, pool, self.g.seed)
        self.issued: dict[str, Issued] = {}
        self.trial_rewards: dict[int, float] = {}  # trials whose reward was used
        self.trials_scored: set[int] = set()  # every trial whose epoch arrived
        self._pending_obs: deque[tuple[str, np.ndarray | None, str | None, float]] = deque()
        self._obs_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generation")
        self._job: _Job | None = None
        self._refit_wanted = False
        self._request_waiting = threading.Event()
        self.n_observations = 0
        self.best_reward: float | None = None
        self._pending_files: tuple | None = None
        self._wake_tx: zmq.Socket | None = None
        self._calibration = reward_fn if isinstance(reward_fn, SessionFittedReward) else None
        self._image_roots = image_roots(protocol, store)
        #: The session whose messages this worker takes (None: any, e.g. a benchmark).
        self.session = (protocol.generation.session or store.root.name) if store else None
        self._parked: list[tuple[EpochMessage, list[np.ndarray]]] = []
        self._loop_started = False  # an image request came: calibration is over
        self._decoder_fit: threading.Thread | None = None
        # the calibration block's size: the decoder is fitted as soon as it is all in
        self._n_calibration = sum(
            b.n_trials * b.n_rounds for b in protocol.presentation.blocks if b.kind == "calibration"
        )

    # -- logging ---------------------------------------------------------------------
    def _log(self, event: str, **fields: Any) -> None:
        if self.store is not None:
            self.store.log(event, **fields)

    # -- dispatch ----------------------------------------------------------------------
    def handle(self, frames: list[bytes]) -> list[bytes] | ImageRequest | None:
        """Answer one request's payload frames; an image request is returned to the loop.

        A rating is not answered (None).
        """
        size = sum(len(f) for f in frames)
        if size > self.g.max_request_bytes:
            return self._error(
                "oversize",
                f"request of {size} bytes exceeds generation.max_request_bytes = "
                f"{self.g.max_request_bytes}",
            )
        try:
            msg, arrays = decode(frames)
        except MessageError as err:
            return self._error("invalid", str(err))
        session = getattr(msg, "session", None)
        if self.session is not None and session is not None and session != self.session:
            return self._error(
                "wrong_session",
                f"message of session {session!r}; this worker serves {self.session!r} "
                "(generation.session names another)",
            )
        if isinstance(msg, EpochMessage):
            return self.score_epoch(msg, arrays)
        if isinstance(msg, StatusRequest):
            return encode(self.status())
        if isinstance(msg, ImageRequest):
            return msg  # answered later: see start_request() and poll_job()
        if isinstance(msg, RatingMessage):
            return self.add_rating(msg)
        return self._error("unsupported", f"the generation worker does not serve {msg.type!r}")

    def _error(self, error: str, detail: str) -> list[bytes]:
        logger.warning("error reply: %s: %s", error, detail)
        self._log("generation_request_error", error=error, detail=detail[:1000])
        return encode(ErrorReply(error=error, detail=detail))

    def status(self) -> StatusReply:
        """What the worker holds now."""
        return StatusReply(
            ready=True,
            busy=self._job is not None,
            backend=self.backend.describe(),
            round=self.generator.round,
            n_observations=self.n_observations,
            best_reward=self.best_reward,
            **_device_status(self.backend),
            queue={
                "parked_epochs": len(self._parked),
                "pending_observations": len(self._pending_obs),
                "running_jobs": int(self._job is not None),
            },
        )

    # -- rewards -----------------------------------------------------------------------
    def _image_for(self, marker: dict[str, Any]) -> tuple[str | None, str | None]:
        """(image id this worker issued, or None; path of the image file, or None)."""
        ref = marker.get(self.g.image_key)
        explicit = marker.get("image_id")
        if isinstance(explicit, str) and explicit in self.issued:
            return explicit, None
        if not isinstance(ref, str) or not ref:
            return None, None
        stem = Path(ref).stem
        if stem in self.issued:
            return stem, None
        return None, ref

    def score_epoch(self, msg: EpochMessage, arrays: list[np.ndarray]) -> list[bytes]:
        """Reward one epoch and credit it to the image its marker names."""
        t0 = time.perf_counter()
        if len(arrays) != 1 or arrays[0].ndim != 2 or arrays[0].shape[0] != len(msg.ch_names):
            return self._error(
                "invalid", f"an epoch needs one (n_channels={len(msg.ch_names)}, n_times) array"
            )
        epoch = EpochData(arrays[0].astype(np.float64), msg.ch_names, msg.sfreq, msg.tmin)
        self.trials_scored.add(msg.trial_id)  # an image request need not wait for it now
        cal = self._calibration
        if cal is not None and not cal.ready:
            return self._before_decoder(cal, msg, arrays, epoch)
        try:
            reward = as_reward(self.reward_fn(epoch))
        except (ValueError, RuntimeError) as err:
            return self._error("reward_failed", f"trial {msg.trial_id}: {err}")
        value = float(reward.value)
        compute_ms = (time.perf_counter() - t0) * 1e3
        image_id, path = self._image_for(msg.marker)
        used, reason = False, ""
        flags = msg.quality.get("flags") or []
        if msg.trial_id in self.trial_rewards:
            reason = "this trial was rewarded already"
        elif flags and not self.g.use_flagged_epochs:
            reason = f"epoch flagged {flags}"
        elif not np.isfinite(value):
            reason = "reward is not finite"
        elif image_id is not None:
            self.credit(msg.trial_id, image_id, self.issued[image_id].embedding, None, value)
            used = True
        elif path is not None and not _inside(path, self._image_roots):
            reason = "the marker names an image outside the session, pool and block folders"
        elif path is not None and Path(path).is_file():
            image_id = Path(path).stem
            self.credit(msg.trial_id, image_id, None, path, value)
            used = True
        else:
            reason = "the marker names no image this worker knows or can read"
        self._log(
            "reward",
            trial_id=msg.trial_id,
            image_id=image_id,
            image=msg.marker.get(self.g.image_key),
            reward=value,
            used=used,
            reason=reason,
            details=reward.details,
            compute_ms=round(compute_ms, 3),
        )
        return encode(
            RewardReply(
                trial_id=msg.trial_id,
                reward=value,
                image_id=image_id,
                used=used,
                reason=reason,
                details=reward.details,
                compute_ms=round(compute_ms, 3),
            )
        )

    def _before_decoder(
        self, cal: SessionFittedReward, msg: EpochMessage, arrays, epoch: EpochData
    ) -> list[bytes]:
        """A calibration epoch is kept for the fit; any other waits for the fit."""
        try:
            kept = cal.keep(epoch, msg.marker, msg.trial_id, msg.quality.get("flags") or [])
        except RewardError as err:
            return self._error("reward_failed", f"trial {msg.trial_id}: {err}")
        if kept is not None:
            reason = f"calibration epoch: kept to fit {cal.what}"
            self._log("calibration_epoch", trial_id=msg.trial_id, **kept)
            if cal.park_kept:  # rewarded after the fit
                with self._obs_lock:
                    parked = not cal.ready
                    if parked:
                        self._parked.append((msg, arrays))
                if not parked:  # fitted meanwhile (on fewer trials): rewarded now
                    return self.score_epoch(msg, arrays)
            self._maybe_block_complete(cal)
        else:
            reason = f"waiting for {cal.what}"
            with self._obs_lock:  # atomic with the fit thread's hand-over of parked epochs
                parked = not cal.ready
                if parked:
                    self._parked.append((msg, arrays))
            if not parked:  # the decoder became ready meanwhile
                return self.score_epoch(msg, arrays)
            self._log("epoch_parked", trial_id=msg.trial_id, reason=reason)
        return encode(RewardReply(trial_id=msg.trial_id, reward=0.0, used=False, reason=reason))

    def _maybe_block_complete(self, cal: SessionFittedReward) -> None:
        """Fit as soon as every trial of the calibration block is in."""
        if cal.n_usable() >= self._n_calibration > 0 and cal.can_fit():
            self._start_decoder_fit(cal)

    def add_rating(self, msg: RatingMessage) -> None:
        """Keep a self-report for the personal reward (other rewards ignore ratings)."""
        cal = self._calibration
        if cal is None or cal.ready:
            return None
        try:
            kept = cal.add_rating(msg)
        except RewardError as err:
            self._error("invalid", str(err))  # logged; a rating is never answered
            return None
        if kept is not None:
            self._log("calibration_rating", trial_id=msg.trial_id, **kept)
            self._maybe_block_complete(cal)
        return None

    def maybe_fit_decoder(self) -> None:
        """Fit the calibration model once the closed loop has begun, if not done yet."""
        cal = self._calibration
        if cal is None or self._decoder_fit is not None or not self._loop_started:
            return  # checked on every pass of the serving loop: cheapest tests first
        if cal.can_fit():
            self._start_decoder_fit(cal)

    def _start_decoder_fit(self, cal: SessionFittedReward) -> None:
        """Fit in a thread of its own, so that round 0's images never wait for it."""
        if self._decoder_fit is not None:
            return
        self._decoder_fit = threading.Thread(
            target=self._fit_decoder, args=(cal,), name="decoder-fit", daemon=True
        )
        self._decoder_fit.start()

    def _fitting_decoder(self) -> bool:
        return self._decoder_fit is not None and self._decoder_fit.is_alive()

    def _fit_decoder(self, cal: SessionFittedReward) -> None:
        try:
            info = cal.fit()
        except Exception as err:  # the session goes on; its epochs stay unscored
            logger.exception("%s could not be fitted", cal.what)
            self._log("decoder_fit_failed", error=f"{type(err).__name__}: {err}")
            return
        self._log(cal.fit_event, **info)
        logger.info("%s fitted: %s", cal.what, info)
        with self._obs_lock:
            parked, self._parked = self._parked, []
        for msg, arrays in parked:
            self.score_epoch(msg, arrays)

    def credit(
        self,
        trial_id: int,
        image_id: str,
        embedding: np.ndarray | None,
        path: str | None,
        value: float,
    ) -> None:
        """Count a trial's reward and queue it for the generator (embedded later if None)."""
        with self._obs_lock:
            self._pending_obs.append((image_id, embedding, path, value))
        self.trial_rewards[trial_id] = value
        self.n_observations += 1
        self.best_reward = value if self.best_reward is None else max(self.best_reward, value)

    def _drain(self) -> None:
        """Move new rewards into the generator (background thread only).

        If embedding fails (a CUDA out-of-memory, say), the rewards go back to the queue
        for the next round instead of being lost.
        """
        with self._obs_lock:
            items = list(self._pending_obs)
            self._pending_obs.clear()
        to_embed = [(i, p, r) for i, e, p, r in items if e is None]
        embedded = []
        if to_embed:
            images, keep = [], []
            for image_id, path, r in to_embed:
                try:
                    with Image.open(path) as im:
                        images.append(im.convert("RGB"))
                    keep.append((image_id, r))
                except (OSError, Image.DecompressionBombError) as err:
                    logger.warning("cannot read %s for its embedding: %s", path, err)
                    self._log("reward_unusable", image=str(path), reason=str(err))
            if images:
                try:
                    embedded = list(zip(keep, self.backend.embed(images), strict=True))
                except Exception as err:  # noqa: BLE001 - keep the rewards for the next round
                    with self._obs_lock:
                        self._pending_obs.extendleft(reversed(items))
                    self._log("embedding_failed", n_rewards=len(items), error=repr(err))
                    raise
        for (image_id, r), e in embedded:
            self.generator.observe(image_id, e, r)
        for image_id, e, _, r in items:
            if e is not None:
                self.generator.observe(image_id, e, r)

    # -- rounds --------------------------------------------------------------------------
    def start_request(self, request: ImageRequest, envelope: list[bytes]) -> list[bytes] | None:
        """Accept an image request (answered later by :meth:`poll_job`)."""
        if self._job is not None:
            return self._error("busy", f"round {self._job.request.round} is still being generated")
        now = time.monotonic()
        budget = request.deadline_s or self.g.deadline_s
        self._loop_started = True
        self._request_waiting.set()
        self._job = _Job(
            request=request,
            envelope=envelope,
            t_received=now,
            deadline=now + budget,
            wait_until=now + min(self.g.reward_wait_s, budget),
        )
        self._log(
            "image_request",
            round=request.round,
            n_images=request.n_images,
            trials=request.trials,
            deadline_s=budget,
        )
        return None

    def _run_job(self, job: _Job) -> None:
        """One round of the heuristic generator (background thread)."""
        try:
            self._drain()

            def on_ready(k: int, candidates: list[Candidate]) -> None:
                now = time.monotonic()
                snap = []
                for c in candidates:  # children change every step; exploration never
                    t = now if c.kind == "child" else job.first_seen.setdefault(id(c), now)
                    snap.append((dataclasses.replace(c), t))
                with job.lock:
                    job.ready, job.inner_steps = snap, k

            def should_stop() -> bool:
                if time.monotonic() >= job.deadline:
                    job.cut_by_deadline = True
                    return True
                return job.cancel.is_set()

            self.generator.next_round(on_ready, should_stop, n_images=job.request.n_images)
            job.timing_ms = self.generator.timing.as_ms()
            job.converged = self.generator.converged()
        except Exception as err:  # a backend failure must not kill the service
            logger.exception("round %d failed", job.request.round)
            job.error = f"{type(err).__name__}: {err}"
        finally:
            job.t_done = time.monotonic()
            job.done.set()
            if self._wake_tx is not None:
                self._wake_tx.send(b"", zmq.NOBLOCK)  # wake the loop: reply at once

    def poll_job(self, now: float) -> tuple[list[bytes], list[bytes]] | None:
        """Start a waiting job, or return (envelope, reply) when it is due."""
        job = self._job
        if job is None:
            return None
        if not job.started:
            waiting = set(job.request.trials) - self.trials_scored
            if waiting and now < job.wait_until:
                return None
            if (
                job.request.trials
                and self._fitting_decoder()
                and now < job.t_received + 0.5 * (job.deadline - job.t_received)
            ):
                return None  # the previous round's rewards come with the decoder
            if waiting:
                self._log("rewards_missing", round=job.request.round, trials=sorted(waiting))
            job.started, job.t_started = True, now
            self._request_waiting.clear()
            self._executor.submit(self._run_job, job)
            return None
        if not job.done.is_set() and now < job.deadline:
            return None
        missed = not job.done.is_set() or job.cut_by_deadline
        job.cancel.set()
        self._job = None
        self._refit_wanted = True
        return job.envelope, self._batch_reply(job, missed)

    def _batch_reply(self, job: _Job, missed: bool) -> list[bytes]:
        t_reply = time.monotonic()
        t0 = time.perf_counter()
        req = job.request
        with job.lock:
            ready = list(job.ready)
        if job.error and not ready:
            return self._error("generation_failed", job.error)
        if not ready:
            return self._error(
                "deadline", f"no image was ready within {job.deadline - job.t_received:.2f} s"
            )
        token = secrets.token_hex(3)
        infos, arrays, records = [], [], []
        counts: dict[str, int] = {}
        for c, t_ready in ready:
            letter = _KIND_LETTER.get(c.kind, "o")
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
                "backend": self.backend.name,
                "model_ids": self.backend.model_ids,
                "wall_time_s": round(t_ready - job.t_started, 4),
                "procedural_params": c.image.info.get("eegs_params"),
                "deadline_missed": missed,
            }
            infos.append(ImageInfo(image_id=image_id, provenance=provenance))
            arrays.append(self._encode_image(c.image))
            records.append((image_id, c, provenance, rel))
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
        frames = encode(msg, tuple(arrays))
        for image_id, c, provenance, _ in records:
            self.issued[image_id] = Issued(
                np.asarray(c.embedding, np.float32), req.round, provenance
            )
        self._pending_files = (records, timing, req.round, missed, len(ready))
        return frames

    def _encode_image(self, image: Image.Image) -> np.ndarray:
        rgb = image.convert("RGB")
        if self.g.image_encoding == "rgb":
            return np.asarray(rgb, dtype=np.uint8)
        buf = io.BytesIO()
        rgb.save(buf, format="PNG", compress_level=self.g.png_compress_level)
        return np.frombuffer(buf.getvalue(), np.uint8)

    def write_provenance(self) -> None:
        """Embeddings and provenance of the last batch (after its reply was sent)."""
        pending, self._pending_files = self._pending_files, None
        if pending is None:
            return
        records, timing, round_, missed, n = pending
        if self.store is not None:
            from safetensors.numpy import save

            for image_id, c, provenance, rel in records:
                tensors = {"embedding": np.asarray(c.embedding, np.float32).reshape(-1)}
                if c.conditioning is not None:
                    tensors["conditioning"] = np.asarray(c.conditioning, np.float32).reshape(-1)
                path = self.store.root / rel
                atomic_write_bytes(path, save(tensors))
                atomic_write_json(path.with_suffix(".json"), {"image_id": image_id, **provenance})
        self._log(
            "image_batch",
            round=round_,
            n_images=n,
            deadline_missed=missed,
            image_ids=[r[0] for r in records],
            timing_ms=timing,
            best_by_round=list(self.generator.best_by_round),
            generator_round=self.generator.round,
        )

    def maybe_refit(self) -> None:
        """Queue the bounded, warm-started hyperparameter refit in idle time."""
        if not self._refit_wanted or self._job is not None:
            return
        self._refit_wanted = False

        def refit() -> None:
            t0 = time.perf_counter()
            try:
                self._drain()
                n = self.generator.refit(should_stop=self._request_waiting.is_set)
            except Exception:  # the next round simply uses the previous fit
                logger.exception("GP refit failed")
                return
            if n:
                self._log(
                    "gp_refit",
                    iters=n,
                    ms=round((time.perf_counter() - t0) * 1e3, 3),
                    n_points=self.generator.gp.n,
                )

        self._executor.submit(refit)

    # -- the loop ------------------------------------------------------------------------
    def serve(
        self,
        router: zmq.Socket,
        sub: zmq.Socket | None = None,
        stop=lambda: False,
        duration_s: float | None = None,
    ) -> None:
        """Answer requests until ``stop()`` or ``duration_s``."""
        ctx = zmq.Context.instance()
        wake_addr = f"inproc://eegs-generation-wake-{id(self)}"
        wake_rx = ctx.socket(zmq.PAIR)
        wake_rx.bind(wake_addr)
        self._wake_tx = ctx.socket(zmq.PAIR)
        self._wake_tx.connect(wake_addr)
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(wake_rx, zmq.POLLIN)
        if sub is not None:
            poller.register(sub, zmq.POLLIN)
        end = None if duration_s is None else time.monotonic() + duration_s
        try:
            self._loop(router, sub, wake_rx, poller, stop, end)
        finally:
            self.close()
            wake_rx.close(0)
            self._wake_tx.close(0)
            self._wake_tx = None

    def _loop(self, router, sub, wake_rx, poller, stop, end) -> None:
        while not stop() and (end is None or time.monotonic() < end):
            events = dict(poller.poll(self._poll_ms()))
            if wake_rx in events:
                wake_rx.recv()
            if router in events:
                frames = router.recv_multipart(copy=True)
                envelope, payload = _envelope(frames)
                reply = self._safe_handle(payload)
                if isinstance(reply, ImageRequest):
                    reply = self.start_request(reply, envelope)
                if reply is not None:
                    router.send_multipart(envelope + reply, copy=False)
            if sub is not None and sub in events:
                self._safe_handle(sub.recv_multipart())  # logged; nobody waits for a reply
            due = self.poll_job(time.monotonic())
            if due is not None:
                envelope, reply = due
                router.send_multipart(envelope + reply, copy=False)
                self.write_provenance()
            self.maybe_fit_decoder()
            self.maybe_refit()

    def _safe_handle(self, payload: list[bytes]) -> list[bytes] | ImageRequest | None:
        """:meth:`handle`, with any unexpected failure turned into an error reply."""
        try:
            return self.handle(payload)
        except Exception as err:  # a bad request must never stop the service
            logger.exception("request failed")
            return self._error("internal", f"{type(err).__name__}: {err}")

    def _poll_ms(self) -> int:
        """Sleep until the next thing due (a deadline, the end of a reward wait), <= 50 ms."""
        job = self._job
        if job is None:
            return 50
        due = job.deadline if job.started else min(job.deadline, job.wait_until)
        return max(0, min(50, int((due - time.monotonic()) * 1e3) + 1))

    def close(self) -> None:
        """Stop the background thread (a running round is cancelled)."""
        if self._job is not None:
            self._job.cancel.set()
        self._request_waiting.set()
        self._executor.shutdown(wait=True, cancel_futures=True)


def run(config: GenerationConfig, stop=lambda: False) -> GenerationService:
    """Entry point of the ``eegs worker`` process."""
    from models.atms import CheckpointError
    from models.rewards import from_settings
    from workers.generation_restore import restore

    protocol = config.protocol
    g = protocol.generation
    store = SessionStore(config.session_dir).open(role="generation", protocol=protocol)
    status = "failed"
    service = None
    router = sub = auth = None
    try:
        t0 = time.perf_counter()
        try:
            if g.reward.mode == "affective" and g.reward.decoder == CALIBRATION:
                reward_fn = CalibratedDecoderReward(
                    protocol.decoder, g.reward.target_class, store.root
                )
            elif g.reward.mode == "personal":
                reward_fn = PersonalSessionReward(
                    g.reward,
                    [b.label for b in protocol.presentation.blocks if b.kind == "calibration"],
                    store.root,
                    seed=g.seed,
                    use_flagged=g.use_flagged_epochs,
                )
            else:
                reward_fn = from_settings(g.reward)
            backend = build_backend(protocol, random_weights=config.random_weights)
            pool = build_pool(protocol, backend)
        except (BackendUnavailableError, RewardError, CheckpointError) as err:
            raise GenerationError(str(err)) from None
        t_load = time.perf_counter() - t0
        backend.warmup(batch=g.heuristic.n_children)
        t_warm = time.perf_counter() - t0 - t_load
        service = GenerationService(protocol, backend, pool, reward_fn, store)
        restored = restore(service, store.root)
        if not restored.empty:
            store.log("generation_restored", **dataclasses.asdict(restored))
            logger.info("took over the session's generator state: %s", restored)
        ctx = zmq.Context.instance()
        net = protocol.network
        router, auth = transport.bind(
            ctx,
            zmq.ROUTER,
            g.endpoint,
            secret_key=net.curve_secret_key,
            authorized_dir=net.curve_authorized_dir,
        )
        router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if g.subscribe_epochs:
            sub = transport.connect(
                ctx,
                zmq.SUB,
                net.epochs_endpoint,
                secret_key=net.curve_secret_key,
                server_public_key=net.curve_public_key,
            )
            sub.setsockopt(zmq.SUBSCRIBE, b"")
        store.log(
            "generation_ready",
            endpoint=g.endpoint,
            load_s=round(t_load, 3),
            warmup_s=round(t_warm, 3),
            pool_size=len(pool),
            **backend.describe(),
        )
        logger.info("generation worker ready on %s (%s)", g.endpoint, backend.name)
        print(f"ready {g.endpoint} backend={backend.name}", flush=True)
        service.serve(router, sub, stop, config.duration_s)
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        if service is not None:
            service.close()
        for sock in (router, sub):
            if sock is not None:
                sock.close(0)
        if auth is not None:
            auth.stop()
        store.close(status)
    return service


def _device_status(backend: Any) -> dict[str, Any]:
    """The backend's device and, on a GPU, the memory torch holds there (the dashboard)."""
    device = str(getattr(backend, "device", "cpu"))
    if not device.startswith("cuda"):
        return {"device": device}
    import torch

    return {"device": device, "gpu_memory_mb": round(torch.cuda.memory_allocated() / 2**20, 1)}


# -- client ---------------------------------------------------------------------------------
class GenerationClient:
    """A DEALER client of the worker (tests, benchmarks, the session loop).

    Sends ``[b"", *frames]`` and reads the reply behind the same delimiter, so that it
    talks to the ROUTER exactly as a REQ socket would, without REQ's lock-step.
    """

    def __init__(
        self, endpoint: str, *, secret_key: str | None = None, server_public_key: str | None = None
    ) -> None:
        self.sock = transport.connect(
            zmq.Context.instance(),
            zmq.DEALER,
            endpoint,
            secret_key=secret_key,
            server_public_key=server_public_key,
        )

    def send_frames(self, frames: list[bytes]) -> None:
        """Send raw payload frames (for malformed-message tests)."""
        self.sock.send_multipart([b"", *frames])

    def receive(self, timeout_s: float) -> tuple[Message, list[np.ndarray]]:
        """The next reply; raises TimeoutError."""
        if not self.sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no reply within {timeout_s} s")
        frames = self.sock.recv_multipart()
        if frames and frames[0] == b"":
            frames = frames[1:]
        return decode(frames)

    def request(
        self, msg: Message, arrays: tuple[np.ndarray, ...] = (), timeout_s: float = 30.0
    ) -> tuple[Message, list[np.ndarray]]:
        """Send one message and wait for its reply."""
        self.send_frames(encode(msg, arrays))
        return self.receive(timeout_s)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close(0)
