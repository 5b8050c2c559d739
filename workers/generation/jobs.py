"""Scheduling rounds: an image request waits for its rewards, runs, and is due by its deadline.

One background thread runs the heuristic generator for one request at a time and, in
idle time, whatever a round would otherwise do first (docs/architecture.md section 3):
new rewards taken into the generator (their images embedded), the GP's first fit once
the calibration observations are in, and after each round the bounded hyperparameter
refit. Idle work yields at once to a new request; the serving loop only polls. A round
that fails is recorded on its job (the reply says so), never raised into the loop.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from experiment_protocols.generation import Generation
from models.heuristic import Candidate, HeuristicGenerator
from workers.generation.ledger import Log
from workers.messages import ErrorReply, ImageRequest

logger = logging.getLogger("eegs.generation")


@dataclass
class Job:
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


class RoundScheduler:
    """One request at a time: wait for its rewards, run its round, hand it back when due.

    Parameters
    ----------
    settings
        The protocol's ``generation`` section (deadline, reward wait).
    generator
        The heuristic generator whose rounds are run.
    drain
        Moves credited rewards into the generator (run in the background thread).
    trials_scored
        Trials whose epoch arrived: a request waits only for the others.
    hold
        True while a reward is being fitted: a request with trials waits for it up to half
        its deadline (the previous round's rewards come with the fit).
    log
        ``log(event, **fields)`` into the session's events.
    pending
        Rewards credited but not yet in the generator: idle time takes them in.
    calibrated
        True once the calibration observations are in: the GP's first fit may start
        (before, idle time only embeds and stores the rewards).
    stop
        Why the closed loop should end (None: it goes on): a round run after it says so
        is sent as the block's last (``converged``, its ``stop_reason``).
    """

    def __init__(
        self,
        settings: Generation,
        generator: HeuristicGenerator,
        drain: Callable[[], None],
        trials_scored: set[int],
        hold: Callable[[], bool],
        log: Log,
        *,
        pending: Callable[[], int] = lambda: 0,
        calibrated: Callable[[], bool] = lambda: True,
        stop: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.g = settings
        self.generator = generator
        self._drain = drain
        self._trials_scored = trials_scored
        self._hold = hold
        self._log = log
        self._pending = pending
        self._calibrated = calibrated
        self._stop = stop
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generation")
        self.job: Job | None = None
        self.wake: Callable[[], None] | None = None  # wakes the serving loop: a reply is due
        self._refit_wanted = False
        self._request_waiting = threading.Event()
        self._idle: Future | None = None  # the idle work queued or running
        self._idle_not_before = 0.0  # after a failure: not again at once

    def start(self, request: ImageRequest, envelope: list[bytes]) -> ErrorReply | None:
        """Accept an image request (handed back by :meth:`poll` when due), or refuse it."""
        if self.job is not None:
            return ErrorReply(
                error="busy", detail=f"round {self.job.request.round} is still being generated"
            )
        now = time.monotonic()
        budget = request.deadline_s or self.g.deadline_s
        self._log(  # first: a request whose event cannot be written is refused, not run
            "image_request",
            round=request.round,
            n_images=request.n_images,
            trials=request.trials,
            deadline_s=budget,
        )
        self._request_waiting.set()
        self.job = Job(
            request=request,
            envelope=envelope,
            t_received=now,
            deadline=now + budget,
            wait_until=now + min(self.g.reward_wait_s, budget),
        )
        return None

    def run(self, job: Job) -> None:
        """One round of the heuristic generator (background thread)."""
        self._request_waiting.clear()
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
            reason = self._stop()
            if reason is not None:
                job.converged = (True, reason)
                self._log("loop_stopped", round=job.request.round, reason=reason)
        except Exception as err:  # a backend failure must not kill the service
            logger.exception("round %d failed", job.request.round)
            job.error = f"{type(err).__name__}: {err}"
        finally:
            job.t_done = time.monotonic()
            job.done.set()
            if self.wake is not None:
                self.wake()  # reply at once

    def poll(self, now: float) -> tuple[Job, bool] | None:
        """Start a waiting job, or hand back (job, deadline missed) when it is due."""
        job = self.job
        if job is None:
            return None
        if not job.started:
            waiting = set(job.request.trials) - self._trials_scored
            if waiting and now < job.wait_until:
                return None
            if (
                job.request.trials
                and self._hold()
                and now < job.t_received + 0.5 * (job.deadline - job.t_received)
            ):
                return None  # the previous round's rewards come with the decoder
            if waiting:
                self._log(
                    "rewards_missing",
                    round=job.request.round,
                    trials=sorted(waiting),
                    waited_s=round(job.wait_until - job.t_received, 3),
                )
            job.started, job.t_started = True, now
            # the flag stays up until the round runs: idle work before it in the queue
            # sees it and makes way
            self.executor.submit(self.run, job)
            return None
        if not job.done.is_set() and now < job.deadline:
            return None
        missed = not job.done.is_set() or job.cut_by_deadline
        job.cancel.set()
        self.job = None
        self._refit_wanted = True
        return job, missed

    def maybe_refit(self) -> None:
        """Queue idle work, if any is due: new rewards in, the GP's first fit, its refit.

        Called on every pass of the serving loop; nothing is queued while a request is
        being served or the last idle work is still queued or running.
        """
        if self.job is not None or (self._idle is not None and not self._idle.done()):
            return
        gen = self.generator
        first_fit = not gen.gp.fitted and gen.n_observations >= 2 and self._calibrated()
        refit = self._refit_wanted or gen.fit_iters_owed > 0
        if not (refit or first_fit or self._pending()):
            return
        if time.monotonic() < self._idle_not_before:
            return
        self._refit_wanted = False
        self._idle = self.executor.submit(self._idle_work, refit)

    def _idle_work(self, refit: bool) -> None:
        """New rewards into the generator, then (if due) the GP's fit (background thread)."""
        t0 = time.perf_counter()
        gen = self.generator
        stop = self._request_waiting.is_set
        try:
            # asked before the drain: once true, every calibration reward is credited,
            # so this drain has them all (asked after, the last ones could miss the fit)
            calibrated = self._calibrated()
            self._drain()
            first = not gen.gp.fitted
            if first and not calibrated:
                return  # stored; the first fit waits for the calibration observations
            n = gen.refit(should_stop=stop) if refit else gen.update_surrogate(stop)
        except Exception:  # the next round simply does it, or uses the previous fit
            logger.exception("idle GP update failed")
            self._idle_not_before = time.monotonic() + 1.0
            return
        if n:
            self._log(
                "gp_refit",
                iters=n,
                ms=round((time.perf_counter() - t0) * 1e3, 3),
                first_fit=first,
                yielded=stop(),  # cut short by a request: the rest is owed to idle time
                owed_iters=gen.fit_iters_owed,
                **gen.gp.summary(),
            )

    def join_idle(self, timeout_s: float | None = None) -> None:
        """Wait for the idle work queued last (tests)."""
        if self._idle is not None:
            self._idle.result(timeout_s)

    def poll_ms(self) -> int:
        """Sleep until the next thing due (a deadline, the end of a reward wait), <= 50 ms."""
        job = self.job
        if job is None:
            return 50
        due = job.deadline if job.started else min(job.deadline, job.wait_until)
        return max(0, min(50, int((due - time.monotonic()) * 1e3) + 1))

    def close(self) -> None:
        """Stop the background thread (a running round is cancelled)."""
        if self.job is not None:
            self.job.cancel.set()
        self._request_waiting.set()
        self.executor.shutdown(wait=True, cancel_futures=True)
