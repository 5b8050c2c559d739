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
  is kept for the personal reward's fit (:mod:`workers.generation.personal_fit`) and not answered,
  whether it comes on the ROUTER or with the epochs on the SUB socket.

Anything else (not JSON, another schema version, oversize, invalid fields, a type the
worker does not serve) gets an :class:`~workers.messages.ErrorReply` and the worker
keeps serving. With ``generation.subscribe_epochs`` the worker also takes every epoch
that ``eegs acquire`` publishes.

A worker started on a session that already has history (``eegs resume``) first takes
over the state of the one before (:mod:`workers.generation.restore`).

This module composes the worker's parts and serves them; each part stands alone and is
tested alone: the books of issued images and rewards (:mod:`workers.generation.ledger`),
scoring (:mod:`workers.generation.scoring`), the session-fitted reward's calibration
(:mod:`workers.generation.calibration`), the rounds' scheduling
(:mod:`workers.generation.jobs`), provenance (:mod:`workers.generation.provenance`), and
what is loaded once (:mod:`workers.generation.setup`). A fault in one part is logged and
answered as an error or skipped; the loop and the other parts go on.

Generation and the GP's fits run in one background thread, so the socket is always
answered. Nothing cold is left for a round (docs/architecture.md section 3): the worker
pays the GP's first-call costs before it serves (:meth:`GenerationService.prepare`),
takes new rewards in and makes the GP's first fit and refits in idle time, and all idle
work yields at once to a new request. Every image's provenance (seed, parents, embedding
file, backend, model ids, inner steps, wall time) goes into the reply and, with the
embeddings, into ``SESSION/generation/round-XX/``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from experiment_protocols import Protocol
from models.backends.base import Backend, BackendUnavailableError
from models.backends.pool import ImagePool
from models.gp import warm_up
from models.heuristic import HeuristicGenerator
from models.rewards.base import RewardError, RewardFunction
from workers import transport
from workers.errors import InputError
from workers.generation.calibration import CalibrationGate
from workers.generation.client import GenerationClient
from workers.generation.jobs import Job, RoundScheduler
from workers.generation.ledger import Issued, RewardLedger
from workers.generation.personal_fit import SessionFittedReward
from workers.generation.provenance import (
    GENERATION_DIR,
    Batch,
    ProvenanceWriter,
    assemble_batch,
    encode_image,
)
from workers.generation.restore import restore
from workers.generation.scoring import EpochScorer, epoch_of, image_roots
from workers.generation.setup import build_backend, build_pool, build_reward
from workers.messages import (
    EpochMessage,
    ErrorReply,
    ImageRequest,
    Message,
    MessageError,
    RatingMessage,
    StatusReply,
    StatusRequest,
    decode,
    encode,
)
from workers.session_store import SessionStore

__all__ = [
    "GENERATION_DIR",
    "GenerationClient",
    "GenerationConfig",
    "GenerationError",
    "GenerationService",
    "Issued",
    "build_backend",
    "build_pool",
    "image_roots",
    "run",
]

logger = logging.getLogger("eegs.generation")


class GenerationError(InputError):
    """A generation setting or resource the worker cannot use; says what to fix."""


@dataclass
class GenerationConfig:
    """What one ``eegs worker`` process does."""

    protocol: Protocol
    session_dir: Path
    duration_s: float | None = None
    random_weights: bool = False


def _envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split ROUTER frames into (identity + delimiter, payload)."""
    if len(frames) > 1 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]


class GenerationService:
    """The worker's parts, composed; :meth:`serve` is its ZeroMQ loop.

    The parts (:mod:`workers.generation.ledger`, :mod:`workers.generation.scoring`,
    :mod:`workers.generation.calibration`, :mod:`workers.generation.jobs`,
    :mod:`workers.generation.provenance`) each stand alone; here every call into one is
    contained, so that a fault in one is logged and answered as an error, and the loop and
    the other parts go on.

    Parameters
    ----------
    protocol
        The session protocol (``generation`` section).
    backend, pool
        Built once (see :func:`build_backend`, :func:`build_pool`).
    reward_fn
        Epoch -> reward in [0, 1] (see :mod:`models.rewards.base`).
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
        #: The session whose messages this worker takes (None: any, e.g. a benchmark).
        self.session = (protocol.generation.session or store.root.name) if store else None
        self.ledger = RewardLedger(self._log)
        self.scorer = EpochScorer(
            self.g, reward_fn, self.ledger, image_roots(protocol, store), self._log
        )
        fitted = reward_fn if isinstance(reward_fn, SessionFittedReward) else None
        # the calibration block's size: the reward is fitted as soon as it is all in; an
        # epoch of a block after it says the calibration is over
        blocks = protocol.presentation.blocks
        n_calibration = sum(b.n_trials * b.n_rounds for b in blocks if b.kind == "calibration")
        last_cal = max((i for i, b in enumerate(blocks) if b.kind == "calibration"), default=-1)
        self.calibration = CalibrationGate(
            fitted,
            n_calibration,
            self.score_epoch,
            self._log,
            later_blocks=[b.label for b in blocks[last_cal + 1 :]] if last_cal >= 0 else [],
        )
        self.rounds = RoundScheduler(
            self.g,
            self.generator,
            self._drain,
            self.ledger.trials_scored,
            self.calibration.fitting,
            self._log,
            pending=self.ledger.n_pending,
            calibrated=self.calibrated,
            stop=self.stop_reason,
        )
        self.provenance = ProvenanceWriter(store, self._log)
        self._pending_batch: Batch | None = None
        self._faults: dict[str, str] = {}  # part -> its last error (logged once)

    # -- the books (public names kept for restore, the CLI and the tests) -------------
    @property
    def issued(self) -> dict[str, Issued]:
        """Images this worker sent, by id."""
        return self.ledger.issued

    @property
    def trial_rewards(self) -> dict[int, float]:
        """Trials whose reward was used."""
        return self.ledger.trial_rewards

    @property
    def trials_scored(self) -> set[int]:
        """Every trial whose epoch arrived."""
        return self.ledger.trials_scored

    @property
    def n_observations(self) -> int:
        """Rewards credited so far."""
        return self.ledger.n_observations

    @property
    def best_reward(self) -> float | None:
        """The best reward credited so far."""
        return self.ledger.best_reward

    def credit(
        self,
        trial_id: int,
        image_id: str,
        embedding: np.ndarray | None,
        path: str | None,
        value: float,
    ) -> None:
        """Count a trial's reward and queue it for the generator (embedded later if None)."""
        self.ledger.credit(trial_id, image_id, embedding, path, value)

    def _drain(self) -> None:
        """Move new rewards into the generator (background thread only)."""
        self.ledger.drain(self.generator, self.backend.embed)

    def stop_reason(self) -> str | None:
        """Why the closed loop should end: the session-fitted reward's say (None: go on)."""
        reward = self.calibration.reward
        return None if reward is None else reward.stop_reason()

    def calibrated(self) -> bool:
        """Whether the calibration observations are in, so the GP's first fit may start.

        A session-fitted reward: once it is fitted and the epochs that waited for it
        (the calibration block's among them) are scored, not before, even when the loop
        has begun: a first fit on the few rewards scored so far would set the GP's
        hyperparameters for the session. A training-free reward: once as many rewards
        are credited as the calibration block has trials (a restarted worker too), or the
        calibration is over without them (:mod:`workers.generation.calibration`); without a
        calibration block, once round 0's images are all rewarded.
        """
        gate = self.calibration
        if gate.reward is not None:
            return gate.settled
        if gate.n_calibration and gate.loop_started:
            return True
        return self.n_observations >= (gate.n_calibration or self.g.heuristic.initial_images)

    def prepare(self) -> dict[str, float]:
        """Before serving: every first-call cost of a round paid, the restored GP fitted.

        The GP's first-call costs (:func:`models.gp.warm_up`), an image's first encoding
        for the reply, and for a worker that took over a session's history
        (:mod:`workers.generation.restore`) its rewards moved into the generator and the
        GP fitted on them, so that the first round it serves is as fast as any other
        (docs/architecture.md section 3). Returns the seconds of each part.
        """
        t0 = time.perf_counter()
        warm_up(self.backend.embed_dim, self.g.gp.threads)
        if len(self.pool):
            encode_image(self.pool.image(0), self.g)
        t1 = time.perf_counter()
        calibrated = self.calibrated()  # before the drain, which then has them all
        self._drain()
        if calibrated:
            self.generator.update_surrogate()
        return {"gp_warmup_s": round(t1 - t0, 3), "gp_fit_s": round(time.perf_counter() - t1, 3)}

    # -- logging ---------------------------------------------------------------------
    def _log(self, event: str, **fields: Any) -> None:
        if self.store is not None:
            self.store.log(event, **fields)

    def _contained(self, part: str, fn: Callable[[], Any]) -> None:
        """Run one part's step; a failure is logged (once while it repeats), not raised."""
        try:
            fn()
        except Exception as err:  # one part's fault must not stop the others
            text = f"{type(err).__name__}: {err}"
            if self._faults.get(part) == text:
                return
            self._faults[part] = text
            logger.exception("%s failed", part)
            try:
                self._log("generation_part_failed", part=part, error=text[:1000])
            except Exception:  # noqa: BLE001 - the events file may be what failed
                logger.warning("generation_part_failed not logged either")

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

    def _answer(self, reply: Message) -> list[bytes]:
        if isinstance(reply, ErrorReply):
            return self._error(reply.error, reply.detail)
        return encode(reply)

    def status(self) -> StatusReply:
        """What the worker holds now."""
        return StatusReply(
            ready=True,
            busy=self.rounds.job is not None,
            backend=self.backend.describe(),
            round=self.generator.round,
            n_observations=self.n_observations,
            best_reward=self.best_reward,
            **_device_status(self.backend),
            queue={
                "parked_epochs": self.calibration.n_parked,
                "pending_observations": self.ledger.n_pending(),
                "running_jobs": int(self.rounds.job is not None),
            },
        )

    # -- rewards -----------------------------------------------------------------------
    def score_epoch(self, msg: EpochMessage, arrays: list[np.ndarray]) -> list[bytes]:
        """Reward one epoch and credit it to the image its marker names.

        Scoring's faults end here: an unexpected error is an ``internal`` error reply.
        """
        try:
            return self._answer(self._score(msg, arrays))
        except Exception as err:  # a bad epoch or reward must not stop the others
            logger.exception("scoring trial %s failed", msg.trial_id)
            return self._error("internal", f"{type(err).__name__}: {err}")

    def _score(self, msg: EpochMessage, arrays: list[np.ndarray]) -> Message:
        t0 = time.perf_counter()
        epoch = epoch_of(msg, arrays)
        if epoch is None:
            return ErrorReply(
                error="invalid",
                detail=f"an epoch needs one (n_channels={len(msg.ch_names)}, n_times) array",
            )
        self.ledger.trials_scored.add(msg.trial_id)  # an image request need not wait for it now
        held = self.calibration.intercept(msg, arrays, epoch)
        if held is not None:
            return held
        return self.scorer.score(msg, epoch, t0)

    def add_rating(self, msg: RatingMessage) -> None:
        """Keep a self-report for the personal reward (other rewards ignore ratings)."""
        refused = self.calibration.add_rating(msg)
        if refused is not None:
            self._answer(refused)  # logged; a rating is never answered

    def maybe_fit_decoder(self) -> None:
        """Fit the calibration model once the calibration is over, if not done yet."""
        self._contained("calibration", self.calibration.maybe_fit)

    # -- rounds --------------------------------------------------------------------------
    def start_request(self, request: ImageRequest, envelope: list[bytes]) -> list[bytes] | None:
        """Accept an image request (answered later by :meth:`poll_job`)."""
        refused = self.rounds.start(request, envelope)
        if refused is not None:
            return self._answer(refused)
        if request.trials:  # a round after round 0; round 0 is asked for during calibration
            self.calibration.loop_started = True
        return None

    def poll_job(self, now: float) -> tuple[list[bytes], list[bytes]] | None:
        """Start a waiting job, or return (envelope, reply) when it is due."""
        due = self.rounds.poll(now)
        if due is None:
            return None
        job, missed = due
        return job.envelope, self._batch_reply(job, missed)

    def _batch_reply(self, job: Job, missed: bool) -> list[bytes]:
        """The due job's reply; its images count as issued once it is built."""
        try:
            batch = assemble_batch(job, missed, self.backend, self.g)
            if isinstance(batch, ErrorReply):
                return self._answer(batch)
            frames = encode(batch.message, tuple(batch.arrays))
        except Exception as err:  # e.g. an image that cannot be encoded: the round fails
            logger.exception("round %d's reply could not be built", job.request.round)
            return self._error("generation_failed", f"{type(err).__name__}: {err}")
        for r in batch.records:
            embedding = np.asarray(r.candidate.embedding, np.float32)
            self.ledger.issued[r.image_id] = Issued(embedding, batch.round, r.provenance)
        self._pending_batch = batch
        return frames

    def write_provenance(self) -> None:
        """Embeddings and provenance of the last batch (after its reply was sent)."""
        batch, self._pending_batch = self._pending_batch, None
        if batch is not None:
            self.provenance.write(batch, self.generator)

    def maybe_refit(self) -> None:
        """Queue the bounded, warm-started hyperparameter refit in idle time."""
        self._contained("refit", self.rounds.maybe_refit)

    # -- the loop ------------------------------------------------------------------------
    def serve(
        self,
        router: zmq.Socket,
        sub: zmq.Socket | None = None,
        stop: Callable[[], bool] = lambda: False,
        duration_s: float | None = None,
    ) -> None:
        """Answer requests until ``stop()`` or ``duration_s``."""
        ctx = zmq.Context.instance()
        wake_addr = f"inproc://eegs-generation-wake-{id(self)}"
        wake_rx = ctx.socket(zmq.PAIR)
        wake_rx.bind(wake_addr)
        wake_tx = ctx.socket(zmq.PAIR)
        wake_tx.connect(wake_addr)
        self.rounds.wake = lambda: wake_tx.send(b"", zmq.NOBLOCK)
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
            self.rounds.wake = None
            wake_rx.close(0)
            wake_tx.close(0)

    def _loop(self, router, sub, wake_rx, poller, stop, end) -> None:
        while not stop() and (end is None or time.monotonic() < end):
            events = dict(poller.poll(self.rounds.poll_ms()))
            if wake_rx in events:
                wake_rx.recv()
            if router in events:
                frames = router.recv_multipart(copy=True)
                envelope, payload = _envelope(frames)
                reply = self._safe_handle(payload, envelope)
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

    def _safe_handle(
        self, payload: list[bytes], envelope: list[bytes] | None = None
    ) -> list[bytes] | None:
        """:meth:`handle` (and an image request started), any failure an error reply."""
        try:
            reply = self.handle(payload)
            if isinstance(reply, ImageRequest):
                # on the SUB socket there is nobody to reply to: ignored, as it always was
                reply = None if envelope is None else self.start_request(reply, envelope)
            return reply
        except Exception as err:  # a bad request must never stop the service
            logger.exception("request failed")
            return self._error("internal", f"{type(err).__name__}: {err}")

    def close(self) -> None:
        """Stop the background thread (a running round is cancelled)."""
        self.rounds.close()


def run(config: GenerationConfig, stop: Callable[[], bool] = lambda: False) -> GenerationService:
    """Entry point of the ``eegs worker`` process."""
    from models.decoders.atms import CheckpointError  # torch: only when a worker starts

    protocol = config.protocol
    g = protocol.generation
    store = SessionStore(config.session_dir).open(role="generation", protocol=protocol)
    status = "failed"
    service = None
    router = sub = auth = None
    try:
        t0 = time.perf_counter()
        try:
            reward_fn = build_reward(protocol, store.root)
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
        prepared = service.prepare()
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
            **prepared,
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
