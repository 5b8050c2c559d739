"""The trial runner of ``eegs present``: blocks, rounds and trials, one flip at a time.

Every frame goes through :meth:`Runner.frame`: draw, (on blank frames only) move the
next image a little closer to the GPU, flip, record the flip on the LSL clock, log
the markers it carried and read the experimenter's keys. A trial is fixation,
stimulus (with the photodiode patch white), ratings (in the blocks that
``presentation.ratings.blocks`` names) and a blank ITI, each a whole number of
frames. Markers go out on the flip that shows what they describe. The next image is
decoded by a thread and uploaded in bands during blank frames; when it is not ready
in time the protocol's late-image policy applies and the display goes on either way.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pylsl

from app.presentation.controls import Aborted, Controls, RemoteControl, StatusLine
from app.presentation.display import (
    FramePacer,
    check_refresh,
    lsl_offset,
    open_window,
    rush_virtual_display,
)
from app.presentation.eventlog import EventWriter
from app.presentation.frames import FrameRecorder, distribution
from app.presentation.images import (
    BatchFailure,
    FolderPlan,
    GeneratorClient,
    ImageFailure,
    ImageLoader,
    ImageRef,
    ImageSourceError,
    StimulusImage,
    fit_size,
    list_images,
    read_image,
)
from app.presentation.markers import MarkerStream
from app.presentation.photodiode import PhotodiodePatch
from app.presentation.ratings import RatingScreen
from app.presentation.responses import ResponseBox
from app.presentation.resume import BlockProgress, read_progress, saved_round_images
from app.presentation.textures import (
    StreamedTexture,
    TextureStager,
    blank_pixels,
    max_texture_size,
    preload,
)
from app.restarts import RestartWatch
from experiment_protocols import Protocol
from experiment_protocols.presentation import Block
from workers.messages import ImageRequest
from workers.priority import current_niceness, rush_frame_loop
from workers.session_store import EVENTS_FILE, EventTail, SessionStore

logger = logging.getLogger("eegs.presentation")

_POOL_TEXTURES = 4  # stand-in images kept on the GPU for the "pool" policy


@dataclass
class PresentConfig:
    """What one ``eegs present`` process shows."""

    protocol: Protocol
    session_dir: Path
    images_dir: Path | None = None
    windowed: bool = False
    stop: threading.Event | None = None
    wait_recording_s: float = 0.0  # wait for the session's XDF recording to start
    resume: bool = False  # continue an interrupted session (see app.presentation.resume)
    control: str | None = None  # the dashboard's control endpoint (controls.RemoteControl)


@dataclass(frozen=True)
class BlockPlan:
    """A protocol block with its image source resolved."""

    block: Block
    source: str  # "folder" | "generator"
    folder: Path | None


@dataclass
class _StandIn:
    """A pool image shown in place of a late or failed one."""

    reason: str  # "late" | "failed"
    failure: ImageFailure | None = None


@dataclass
class _Round:
    plan: BlockPlan
    index: int
    remaining: int
    folder_plan: FolderPlan | None
    t_progress: float
    trials: list[int] = field(default_factory=list)
    failures: int = 0
    dead: str | None = None


def resolve_blocks(protocol: Protocol, images_dir: Path | None) -> list[BlockPlan]:
    """Each block's image source; folders are checked now, before a window opens.

    ``images_dir`` (``--images``) replaces every block's source. A relative folder in
    the protocol is relative to the protocol file.
    """
    base = Path(protocol.source).resolve().parent if protocol.source else Path.cwd()
    plans = []
    for i, block in enumerate(protocol.presentation.blocks):
        if images_dir is not None:
            plans.append(BlockPlan(block, "folder", Path(images_dir).expanduser().resolve()))
            continue
        if block.source == "generator":
            plans.append(BlockPlan(block, "generator", None))
            continue
        if not block.folder:
            raise ImageSourceError(
                f"presentation.blocks[{i}] ({block.label}) takes images from a folder but "
                "names none: set its `folder` or pass --images DIR"
            )
        folder = (base / block.folder).resolve()
        plans.append(BlockPlan(block, "folder", folder))
    for plan in plans:
        if plan.folder is not None:
            list_images(plan.folder)  # raises with the folder's name
    return plans


class Runner:
    """Runs a protocol's blocks in an open window; one instance per session."""

    def __init__(
        self,
        protocol: Protocol,
        plans: list[BlockPlan],
        win: Any,
        *,
        store: SessionStore,
        log: EventWriter,
        markers: MarkerStream,
        loader: ImageLoader,
        client: GeneratorClient | None,
        controls: Controls,
        status: StatusLine,
        clock_offset: float,
        progress: dict[str, BlockProgress] | None = None,
        box: ResponseBox | None = None,
    ) -> None:
        from psychopy import visual

        self.protocol = protocol
        self.pres = pres = protocol.presentation
        self.plans = plans
        self.win = win
        self.session = store.root.name
        self.log = log
        self.markers = markers
        self.loader = loader
        self.client = client
        self.controls = controls
        self.status = status
        self.offset = clock_offset
        scr = pres.screen
        self.period = 1.0 / scr.refresh_hz
        self.frames = FrameRecorder(scr.refresh_hz, scr.dropped_frame_margin_ms)
        self.pacer = FramePacer(scr.refresh_hz) if scr.pace_frames else None
        self.stager = TextureStager(scr.upload_budget_ms)
        self.max_texture = max_texture_size()
        self.rng = np.random.default_rng(pres.seed)
        self.next_trial = _next_trial_id(store)
        self.trials_done = 0
        self.total_trials = sum(p.block.n_trials * p.block.n_rounds for p in plans)
        self.progress = progress
        self.images_root = store.root.resolve() / "images"
        self.round: _Round | None = None
        self.current: dict[str, Any] = {}
        self._requested: set[tuple[str, int]] = set()
        self._reshown: set[int] = set()  # trials whose image was shown again
        self._restarts = RestartWatch(store.root)  # a worker being restarted is waited for
        self._pool: list[StreamedTexture] = []
        self._pool_next = 0
        self._n_blocks = 0
        self._cpu0 = time.thread_time()
        self._wall0 = time.perf_counter()
        color = scr.text_color
        self.fixation = visual.ShapeStim(
            win,
            vertices="cross",
            size=scr.fixation_height,
            units="height",
            lineColor=color,
            fillColor=color,
            autoLog=False,
        )
        self.text = visual.TextStim(
            win, text="", height=0.04, units="height", color=color, wrapWidth=1.5, autoLog=False
        )
        self.image = visual.ImageStim(win, image=None, units=scr.units, autoLog=False)
        self.patch = PhotodiodePatch(win, pres.photodiode)
        rated = any(pres.ratings.rates(p.block.kind) for p in plans)
        self.ratings = RatingScreen(win, pres.ratings, color) if rated else None
        self.box = box

    # -- setup -------------------------------------------------------------------------
    def load_pool(self, folder: Path) -> None:
        """Put a few stand-in images on the GPU (``pool`` policy), before the session."""
        plan = FolderPlan(folder, self.pres.seed)
        for ref in plan.draw(min(_POOL_TEXTURES, len(plan.refs))):
            try:
                image = read_image(ref, self.max_texture)
            except ValueError as err:
                self.log("image_failed", image=str(ref.path), reason=str(err), pool=True)
                continue
            self._pool.append(preload(image))
        if not self._pool:
            raise ImageSourceError(f"no image of pool_folder {folder} could be loaded")

    def warm_up(self) -> None:
        """Draw every stimulus once so shaders compile before the first real frame."""
        tex = preload(StimulusImage(ImageRef(Path("warm-up")), "", blank_pixels()))
        self.image.image = tex
        self.image.size = fit_size((4, 4), self.pres.screen.image_size)
        for _ in range(2):
            self.image.draw()
            self.fixation.draw()
            self.text.text = "."
            self.text.draw()
            self.patch.draw(True)
            self.patch.draw(False)
            if self.ratings is not None:
                self.ratings.warm_up()
            self.win.flip()
        self.win.flip()
        tex.delete()
        gc.collect()
        gc.freeze()  # nothing allocated so far is ever scanned again: shorter GC pauses

    # -- one frame ---------------------------------------------------------------------
    def frame(
        self,
        phase: str,
        draw: Callable[[], None] | None = None,
        *,
        stimulus: bool = False,
        poll: bool = True,
    ) -> tuple[int, float]:
        """Draw, upload (blank frames only), flip and record one frame.

        Returns the frame index and its flip time on the LSL clock.
        """
        if draw is not None:
            draw()
        self.patch.draw(stimulus)
        if not stimulus:
            self._pump()
        cpu_ms = (time.thread_time() - self._cpu0) * 1e3
        work_ms = (time.perf_counter() - self._wall0) * 1e3
        if self.pacer is not None:
            self.pacer.wait()
        t_call = time.perf_counter()
        t = self.win.flip()
        self._cpu0 = time.thread_time()
        self._wall0 = time.perf_counter()
        if self.pacer is not None:
            self.pacer.flipped()
        t_lsl = t + self.offset
        i = self.frames.add(t_lsl, cpu_ms, work_ms, phase, (self._wall0 - t_call) * 1e3)
        self.markers.flipped(i, t_lsl)
        if poll:
            self.controls.poll()
        return i, t_lsl

    def _pump(self) -> None:
        """Take the next decoded image if there is room, and upload part of it."""
        if self.stager.wants_image:
            item = self.loader.poll()
            if item is not None:
                self._take(item)
        self.stager.step()

    def _take(self, item: StimulusImage | ImageFailure | BatchFailure) -> None:
        rnd = self.round
        if isinstance(item, BatchFailure):
            if rnd is not None and item.round == rnd.index:
                rnd.dead = f"images failed: {item.reason}"
            return
        if isinstance(item, StimulusImage) and max(item.size) > self.max_texture:
            item = ImageFailure(item.ref, f"larger than the GPU's {self.max_texture} px")
        if isinstance(item, StimulusImage):
            self.stager.start(item)
            if rnd is not None:
                rnd.t_progress = pylsl.local_clock()
            return
        where = self._where()
        self.log("image_failed", **where, image=str(item.ref.path), reason=item.reason)
        logger.warning("image %s failed: %s", item.ref.path, item.reason)
        if rnd is None:
            return
        rnd.t_progress = pylsl.local_clock()
        if self.pres.late_image_policy == "pool":
            self.stager.ready.append(_StandIn("failed", item))  # type: ignore[arg-type]
        elif rnd.folder_plan is not None:
            rnd.failures += 1
            if rnd.failures > len(rnd.folder_plan.refs):
                rnd.dead = f"{rnd.failures} images failed to load: is the folder readable?"
                return
            (ref,) = rnd.folder_plan.draw(1, rnd.index)
            self.loader.submit(ref)
            self.log("image_replaced", **where, image=str(item.ref.path), by=str(ref.path))
        else:
            rnd.remaining -= 1  # a generated image that cannot be shown: one trial fewer

    # -- session -----------------------------------------------------------------------
    def run(self) -> None:
        """Instructions, then every block."""
        self.text_screen(self.pres.instructions, "instructions")
        for plan in self.plans:
            done = self.progress.get(plan.block.label) if self.progress is not None else None
            if done is not None and done.ended:
                self._n_blocks += 1  # its folder draws keep their seeds
                continue
            self.run_block(plan, done)
        self.frame("blank")

    def run_block(self, plan: BlockPlan, done: BlockProgress | None = None) -> None:
        """All rounds of one block, between block_start and block_end markers.

        ``done`` (a resumed session) is what the block showed before: it starts at
        the first round with images left, and shows only those.
        """
        block = plan.block
        info = {"block": block.label, "kind": block.kind}
        first = done.start_round(block.n_trials) if done is not None else 0
        self.markers.on_next_flip(
            "block_start",
            **info,
            n_rounds=block.n_rounds,
            n_trials=block.n_trials,
            source=plan.source,
            resumed_at_round=first if done is not None else None,
        )
        self.frame("blank")
        self._n_blocks += 1
        folder_plan = (
            FolderPlan(plan.folder, f"{self.pres.seed}-{self._n_blocks}")
            if plan.source == "folder"
            else None
        )
        reason = "completed"
        trials: list[int] = done.trials.get(first - 1, []) if done is not None else []
        for r in range(first, block.n_rounds):
            rnd = _Round(plan, r, block.n_trials, folder_plan, pylsl.local_clock())
            self.round = rnd
            if done is not None and r == first:
                self._resume_round(rnd, done, first)
            elif folder_plan is not None:
                for ref in folder_plan.draw(block.n_trials, r):
                    self.loader.submit(ref)
            else:
                self._request(plan, r, trials)
            while rnd.remaining > 0 and rnd.dead is None:
                if self.trial(rnd):
                    self._between_trials()
            trials = rnd.trials
            self._end_round(rnd)
            if rnd.dead is not None:
                reason = rnd.dead
                self.log("round_ended_early", **info, round=r, reason=reason)
                break
            if self.client is not None and r in self.client.converged:
                reason = f"generator converged: {self.client.converged[r]}"
                break
        intact = reason == "completed" or reason.startswith("generator converged")
        if plan.source == "generator" and self.pres.reshow_lost_trials and intact:
            self._reshow_lost(plan)
        self.round = None
        self.markers.on_next_flip("block_end", **info, reason=reason)
        self.frame("blank")

    def _reshow_lost(self, plan: BlockPlan) -> None:
        """Show once more each image of the block whose trial lost its epoch (new trial ids)."""
        from app.presentation.reshow import lost_images

        lost = lost_images(self.images_root.parent, plan.block.label, self._reshown)
        for r, items in sorted(lost.items()):
            rnd = _Round(plan, r, len(items), None, pylsl.local_clock())
            self.round = rnd
            for tid, ref in items:
                self._reshown.add(tid)
                self.loader.submit(ref)
            trials = [tid for tid, _ in items]
            self.log("trials_reshown", block=plan.block.label, round=r, trials=trials)
            while rnd.remaining > 0 and rnd.dead is None:
                if self.trial(rnd):
                    self._between_trials()
            self._end_round(rnd)

    def _resume_round(self, rnd: _Round, done: BlockProgress, first: int) -> None:
        """Queue the images of a resumed block's first round that were never shown."""
        plan, n = rnd.plan, rnd.plan.block.n_trials
        shown = set(done.shown.get(first, []))
        rnd.trials = list(done.trials.get(first, []))
        if rnd.folder_plan is not None:
            for r in range(first):  # the same draws as the first run
                rnd.folder_plan.draw(n, r)
            refs = rnd.folder_plan.draw(n, first)
        else:
            refs = saved_round_images(self.images_root / _images_folder(plan.block, first), first)
        left = [ref for ref in refs if str(ref.path) not in shown]
        rnd.remaining = n - len(shown)
        self.log(
            "round_resumed",
            block=plan.block.label,
            round=first,
            shown_before=len(shown),
            images_left=len(left),
        )
        if rnd.folder_plan is None and not left:
            self._request(plan, first, done.trials.get(first - 1, []))
            return
        rnd.remaining = min(rnd.remaining, len(left))
        for ref in left[: rnd.remaining]:
            self.loader.submit(ref)
        self._requested.add((plan.block.label, first))

    def _request(self, plan: BlockPlan, r: int, trials: list[int]) -> None:
        key = (plan.block.label, r)
        if self.client is None or key in self._requested:
            return
        self._requested.add(key)
        block = plan.block
        folder = _images_folder(block, r)
        req = ImageRequest(
            session=self.session,
            block=block.label,
            round=r,
            n_images=block.n_trials,
            trials=list(trials),
        )
        self.client.request(req, folder)

    def _end_round(self, rnd: _Round) -> None:
        last = rnd.index + 1 >= rnd.plan.block.n_rounds
        if rnd.dead is not None or last:
            # leftovers of a broken round, or of a block: never shown later. A round that
            # completed mid-block left nothing of its own, only the next round's images
            # (asked for during its last stimulus), which are kept.
            self.loader.clear()
            self.stager.clear()
        if self.client is not None:
            self.client.cancel(rnd.index)

    # -- one trial ---------------------------------------------------------------------
    def _durations(self) -> tuple[int, int, int]:
        t = self.pres.timing
        hz = self.pres.screen.refresh_hz

        def frames(base: float, jitter: float) -> int:
            value = base + (self.rng.uniform(-jitter, jitter) if jitter else 0.0)
            return max(0, int(round(value * hz)))

        return (
            frames(t.fixation_s, t.fixation_jitter_s),
            max(1, frames(t.stimulus_s, t.stimulus_jitter_s)),
            max(1, frames(t.iti_s, t.iti_jitter_s)),
        )

    def trial(self, rnd: _Round) -> bool:
        """Fixation, stimulus, (ratings), ITI; logs the trial with its achieved timing.

        Returns False when the round's images stopped coming and no stimulus was shown.
        """
        n_fix, n_stim, n_iti = self._durations()
        tid = self.next_trial
        info = {"trial": tid, "block": rnd.plan.block.label, "round": rnd.index}
        self.current = {**info, "phase": "fixation"}
        timeout = self.pres.late_image_timeout_s
        first = t_fix = None
        late_t0 = None
        k = 0
        while True:
            if k >= n_fix:
                item = self.stager.ready.popleft() if self.stager.ready else None
                if item is not None:
                    break
                now = pylsl.local_clock()
                if rnd.dead is None and now - rnd.t_progress > timeout:
                    worker = self._restarts.restarting("worker", grace_s=timeout)
                    if rnd.plan.source == "generator" and worker:  # restarting, or just back
                        rnd.t_progress = now - timeout + 1.0  # ask again in 1 s
                    else:
                        rnd.dead = f"no image for {timeout:g} s (late_image_timeout_s)"
                if rnd.dead is not None:
                    self.log("trial_cancelled", **info, reason=rnd.dead)
                    return False
                if self.pres.late_image_policy == "pool":
                    item = _StandIn("late")
                    break
                if late_t0 is None:
                    late_t0 = now
                    self.log("image_late", **info, policy="wait")
            if first is None:
                self.markers.on_next_flip("fixation_onset", **info)
            i, t = self.frame("fixation", self.fixation.draw)
            if first is None:
                first, t_fix = i, t
            k += 1
        late_ms = 0.0 if late_t0 is None else (pylsl.local_clock() - late_t0) * 1e3
        if isinstance(item, _StandIn):
            tex = self._pool[self._pool_next % len(self._pool)]
            self._pool_next += 1
            stand_in = item.reason
            if item.reason == "failed":
                rnd.remaining -= 1
        else:
            tex, stand_in = item, None
            rnd.remaining -= 1
        image = tex.image
        self.image.image = tex
        self.image.size = fit_size(image.size, self.pres.screen.image_size)
        if rnd.remaining == 0 and rnd.index + 1 < rnd.plan.block.n_rounds:
            # the round's last image is about to show: ask for the next round now, so the
            # generator works while it is on screen (a non-blocking hand-off to a thread)
            self._request(rnd.plan, rnd.index + 1, [*rnd.trials, tid])
        onset = self.markers.on_next_flip(
            "stimulus_onset",
            **info,
            image=str(image.ref.path),
            sha256=image.sha256,
            label=image.ref.label,
            stand_in=stand_in,
        )
        self.current["phase"] = "stimulus"
        on_i = t_on = None
        gc.disable()  # no collector pause while a stimulus is on screen
        try:
            for _ in range(n_stim):
                i, t = self.frame("stimulus", self.image.draw, stimulus=True)
                if on_i is None:
                    on_i, t_on = i, t
        finally:
            gc.enable()
        if first is None:
            first, t_fix = on_i, t_on
        self.markers.on_next_flip("stimulus_offset", **info)
        self.current["phase"] = "offset"
        rnd.trials.append(tid)
        self.next_trial += 1
        if rnd.remaining == 0 and rnd.index + 1 < rnd.plan.block.n_rounds:
            self._request(rnd.plan, rnd.index + 1, rnd.trials)  # if not asked for already
        rating = None
        last = on_i
        aborted = None
        try:
            if self.ratings is not None and self.pres.ratings.rates(rnd.plan.block.kind):
                rating = self._rate(info)
            self.current["phase"] = "iti"
            for _ in range(n_iti):
                last, _t = self.frame("blank")
        except Aborted as err:
            aborted = err.reason  # the stimulus was shown whole: the trial counts
            raise
        finally:
            if stand_in is None:
                self.stager.recycle(tex)
            off_i = on_i + n_stim
            if off_i < len(self.frames):  # the offset flip happened
                t_off = self.frames.flip_lsl[off_i]
                shown_ms = (t_off - t_on) * 1e3
                self.log(
                    "trial",
                    **info,
                    image=onset["image"],
                    sha256=image.sha256,
                    label=image.ref.label,
                    stand_in=stand_in,
                    late_ms=round(late_ms, 3),
                    fixation_frames=k,
                    fixation_ms=round((t_on - t_fix) * 1e3, 3),
                    stimulus_frames_planned=n_stim,
                    stimulus_frames=int(round(shown_ms / (self.period * 1e3))),
                    stimulus_ms=round(shown_ms, 3),
                    iti_frames=n_iti,
                    dropped_frames=self.frames.dropped(first, last),
                    rating=rating,
                    t_onset_lsl=t_on,
                    t_offset_lsl=t_off,
                    frame_intervals_ms=np.round(self.frames.intervals_ms(first, last), 3),
                    aborted=aborted,
                )
        self.current = {}
        return True

    def _rate(self, info: dict[str, Any]) -> dict[str, Any]:
        """The rating screen of one trial, with its markers: one per question, then answers.

        ``rating_onset`` (trial, block, round, scale, low, high) goes out on the flip that
        first shows each question; ``rating`` (trial, block, round, each scale's value,
        ``rt_ms``, ``input``, low, high; a scale that timed out has no value) on the first
        frame after the last answer.
        """
        cfg = self.pres.ratings
        scale_range = {"low": cfg.low, "high": cfg.high}
        self.current["phase"] = "rating"
        self.controls.extra = self.ratings.keys
        try:
            rating = self.ratings.run(
                lambda phase, draw: self.frame(phase, draw),
                lambda: self.controls.pressed,
                onset=lambda scale: self.markers.on_next_flip(
                    "rating_onset", **info, scale=scale, **scale_range
                ),
                box=self.box,
                where=info,
            )
        finally:
            self.controls.extra = []
        self.markers.on_next_flip("rating", **info, **rating, **scale_range)
        return rating

    def _between_trials(self) -> None:
        self.trials_done += 1
        if self.box is not None:
            self.box.discard(self._where())  # pressed outside a question: not an answer
        rnd = self.round
        self.status.show(
            f"{rnd.plan.block.label} round {rnd.index + 1}/{rnd.plan.block.n_rounds} | "
            f"trial {self.trials_done}/{self.total_trials} | dropped "
            f"{self.frames.dropped(0, len(self.frames) - 1)} | images ready "
            f"{len(self.stager.ready)}"
        )
        every = self.pres.rest_every_n_trials
        if every and self.trials_done % every == 0 and self.trials_done < self.total_trials:
            self.text_screen(self.pres.rest_text, "rest")
        if self.controls.pause_requested:
            self.pause()

    # -- screens -----------------------------------------------------------------------
    def text_screen(self, text: str, kind: str) -> None:
        """A text screen (instructions, rest) that ends on the proceed key or a timer."""
        self.text.text = text
        self.controls.clear()
        self.markers.on_next_flip(f"{kind}_start")
        _, t0 = self.frame("text", self.text.draw)
        while True:
            _, t = self.frame("text", self.text.draw)
            if t - t0 >= self.pres.text_min_s and (
                not self.pres.wait_for_key or self.controls.proceed_pressed
            ):
                break
        self.markers.on_next_flip(f"{kind}_end")
        self.frame("blank")

    def pause(self) -> None:
        """Hold between trials until the resume key (abort still works)."""
        self.controls.pause_requested = False
        self.controls.clear()
        self.text.text = "Paused"
        self.markers.on_next_flip("pause", after_trial=self.next_trial - 1)
        self.status.show("PAUSED")
        while not self.controls.resume_pressed:
            self.frame("pause", self.text.draw)
        self.markers.on_next_flip("resume")
        self.frame("blank")
        self.status.show("resumed")

    def abort(self, reason: str) -> None:
        """Show a blank frame carrying the abort marker; the caller then closes."""
        self.markers.on_next_flip("abort", reason=reason, **self.current)
        self.frame("blank", poll=False)
        self.log("abort", reason=reason, **self.current)

    # -- results -----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What the session's ``session.json`` keeps about the presentation."""
        out = self.frames.summary()
        out.update(
            n_trials=self.trials_done,
            n_markers=self.markers.n_sent,
            marker_push_delay_ms=distribution(np.asarray(self.markers.push_delays_ms)),
            uploaded_rows=self.stager.uploaded_rows,
        )
        if self.box is not None:
            out["response_box"] = {
                "stream": self.box.name,
                "received": self.box.n_received,
                "invalid": self.box.n_invalid,
            }
        return out

    def _where(self) -> dict[str, Any]:
        rnd = self.round
        if rnd is None:
            return {}
        return {"block": rnd.plan.block.label, "round": rnd.index}


def _images_folder(block: Block, round_: int) -> str:
    """Folder under ``SESSION/images`` of a generated round's images."""
    name = f"round-{round_:02d}"
    return name if block.kind == "closed_loop" else f"{block.label}/{name}"


def _next_trial_id(store: SessionStore) -> int:
    """One past the highest trial id already in the session (a resumed session)."""
    top = -1
    for ev in store.events():
        if ev.get("event") == "trial":
            top = max(top, int(ev.get("trial", -1)))
        elif ev.get("event") == "epoch":  # an onset whose own log line was lost
            top = max(top, int(ev.get("trial_id", -1)))
        elif ev.get("event") == "marker_sent":
            trial = ev.get("marker", {}).get("trial")
            if isinstance(trial, int):
                top = max(top, trial)
    return top + 1


def _wait_for_recording(win, events: EventTail, timeout: float) -> bool:
    """Keep flipping the idle screen until the session's recorder runs (no marker lost).

    ``events`` was opened before the marker stream existed, so only a recording
    started for this run counts (a resumed session has older ones).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e["event"] == "recording_started" for e in events.new()):
            return True
        for _ in range(6):
            win.flip()
    return False


def run(config: PresentConfig) -> dict[str, Any]:
    """Entry point of the ``eegs present`` process; returns the session's summary."""
    protocol = config.protocol
    pres = protocol.presentation
    plans = resolve_blocks(protocol, config.images_dir)
    pool_folder = None
    if pres.late_image_policy == "pool":
        base = Path(protocol.source).resolve().parent if protocol.source else Path.cwd()
        pool_folder = (base / pres.pool_folder).resolve()
        list_images(pool_folder)
    store = SessionStore(config.session_dir)
    progress = read_progress(store) if config.resume else None
    store.open(role="presentation", protocol=protocol)
    new_events = EventTail(store.root / EVENTS_FILE)
    new_events.new()  # from here on: what this run's processes write
    log = EventWriter(store)
    loader = ImageLoader()
    client = None
    box = None
    remote = None
    win = runner = None
    status = "failed"
    summary: dict[str, Any] = {}
    status_line = StatusLine(pres.keys)
    try:
        win = open_window(pres, windowed=config.windowed)
        measured = None
        if pres.screen.check_refresh and not pres.screen.pace_frames:
            measured = check_refresh(win, pres)
        offset = lsl_offset()
        markers = MarkerStream(win, protocol.streams.markers, log, offset)
        if any(p.source == "generator" for p in plans):
            net = protocol.network
            client = GeneratorClient(
                protocol.generation.endpoint,
                store.root,
                loader,
                secret_key=net.curve_secret_key,
                server_public_key=net.curve_public_key,
                on_event=log,
            )
        if pres.response_stream and any(pres.ratings.rates(p.block.kind) for p in plans):
            box = ResponseBox(pres.response_stream, log)
        if config.control:
            remote = RemoteControl(config.control, log)
        runner = Runner(
            protocol,
            plans,
            win,
            store=store,
            log=log,
            markers=markers,
            loader=loader,
            client=client,
            controls=Controls(pres.keys, config.stop, remote),
            status=status_line,
            clock_offset=offset,
            progress=progress,
            box=box,
        )
        if pool_folder is not None:
            runner.load_pool(pool_folder)
        runner.warm_up()
        # last: every helper thread exists by now and stays ordinary; the frame loop (and
        # a software-GL display's drawing threads) go first from here on
        realtime = protocol.priority.presentation_realtime and rush_frame_loop("presentation")
        display_realtime = rush_virtual_display() if realtime else None
        log(
            "presentation_ready",
            window_px=list(win.size),
            refresh_hz=pres.screen.refresh_hz,
            measured_refresh_hz=measured,
            paced=pres.screen.pace_frames,
            niceness=current_niceness(),  # set by `eegs present`, before any thread
            realtime=realtime,
            display_server_realtime=display_realtime,
            lsl_minus_psychopy_s=offset,
            markers=protocol.streams.markers,
            blocks=[
                {"block": p.block.label, "source": p.source, "folder": p.folder} for p in plans
            ],
            gl_max_texture=runner.max_texture,
            response_stream=box.name if box is not None else None,
            control=config.control,
        )
        if not markers.wait_for_consumers(protocol.streams.connect_timeout_s):
            logger.warning("nobody reads the marker stream '%s' yet", protocol.streams.markers)
            log("markers_unheard", timeout_s=protocol.streams.connect_timeout_s)
        if box is not None and not box.connected.wait(min(protocol.streams.connect_timeout_s, 5)):
            logger.warning(
                "response stream '%s' not found yet (still looked for; keys and mouse work)",
                box.name,
            )
            log("response_stream_unheard", stream=box.name)
        if config.wait_recording_s > 0 and not _wait_for_recording(
            win, new_events, config.wait_recording_s
        ):
            log("recording_not_started", timeout_s=config.wait_recording_s)
        runner.run()
        status = "completed"
    except Aborted as err:
        if runner is not None:
            runner.abort(err.reason)
        status = "aborted"
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        status_line.done()
        if runner is not None:
            runner.frames.save(store.root)
            summary = runner.summary()
        try:
            log.close()
        finally:
            store.close(status, presentation=summary)
            if client is not None:
                client.close()
            if box is not None:
                box.close()
            if remote is not None:
                remote.close()
            loader.close()
            if win is not None:
                win.close()
    return {"status": status, **summary}
