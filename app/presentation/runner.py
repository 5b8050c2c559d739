"""The runner of ``eegs present``: the session's blocks, one flip at a time.

Every frame goes through :meth:`Runner.frame`: draw, (on blank frames only) move the
next image a little closer to the GPU, flip, record the flip on the LSL clock, log
the markers it carried and read the experimenter's keys. A block
(:mod:`app.presentation.block`) is rounds of trials; a trial
(:mod:`app.presentation.trial`) is fixation, stimulus (with the photodiode patch
white), ratings (in the blocks that ``presentation.ratings.blocks`` names) and a blank
ITI, each a whole number of frames. Markers go out on the flip that shows what they
describe. The next image is decoded by a thread and uploaded in bands during blank
frames; when it is not ready in time the protocol's late-image policy applies and the
display goes on either way.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pylsl

from app.presentation.block import Round, images_folder, run_block
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
from app.presentation.trial import StandIn
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
        progress: dict[str, BlockProgress | None] | None = None,
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
        self.total_trials = sum(p.block.trials_per_round * p.block.n_rounds for p in plans)
        self.progress = progress
        self.images_root = store.root.resolve() / "images"
        self.round: Round | None = None
        self.current: dict[str, Any] = {}
        self.requested: set[tuple[str, int]] = set()  # (block, round) asked of the generator
        self.held: set[tuple[str, int]] = set()  # asked ahead of their block, not released
        self.reshown: set[int] = set()  # trials whose image was shown again
        self.restarts = RestartWatch(store.root)  # a worker being restarted is waited for
        self.n_blocks = 0  # blocks begun (or skipped by a resumed session): folder draw seeds
        self._pool: list[StreamedTexture] = []
        self._pool_next = 0
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

    def stand_in_texture(self) -> StreamedTexture:
        """The next of the pool's stand-in images (round robin)."""
        tex = self._pool[self._pool_next % len(self._pool)]
        self._pool_next += 1
        return tex

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
        where = self.where()
        self.log("image_failed", **where, image=str(item.ref.path), reason=item.reason)
        logger.warning("image %s failed: %s", item.ref.path, item.reason)
        if rnd is None:
            return
        rnd.t_progress = pylsl.local_clock()
        if self.pres.late_image_policy == "pool":
            self.stager.ready.append(StandIn("failed", item))  # type: ignore[arg-type]
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
        """Instructions, then every block (:func:`app.presentation.block.run_block`).

        The first generator block's round 0 is asked for before anything is shown: it is
        the generator's round 0, random pool images that nothing shown before changes, so
        it is stored and decoded while the blocks before it run (:meth:`ask_ahead`). A
        resumed session asks for that of the first generator block it has not ended.
        """
        for plan in self.plans:
            self.progress_of(plan)  # the disk is read now, never from the frame loop
        first = next(
            (
                p
                for p in self.plans
                if p.source == "generator" and not getattr(self.progress_of(p), "ended", False)
            ),
            None,
        )
        if first is not None:
            self.ask_ahead(first, [])
        self.text_screen(self.pres.instructions, "instructions")
        for plan in self.plans:
            done = self.progress_of(plan)
            if done is not None and done.ended:
                self.n_blocks += 1  # its folder draws keep their seeds
                continue
            run_block(self, plan, done)
        self.frame("blank")

    def progress_of(self, plan: BlockPlan) -> BlockProgress | None:
        """What a resumed session showed of a block before (None: a fresh block).

        A generator block whose round 0 came ahead of it, before the cut, counts as begun
        with nothing shown: those images are read back, never asked for again (the
        worker's generator is past its round 0 by then).
        """
        if self.progress is None:
            return None
        label = plan.block.label
        if label not in self.progress:  # looked up once, before the first block
            folder = self.images_root / images_folder(plan.block, 0)
            saved = plan.source == "generator" and saved_round_images(folder, 0)
            self.progress[label] = BlockProgress() if saved else None
        return self.progress[label]

    def request(self, plan: BlockPlan, r: int, trials: list[int], *, ahead: bool = False) -> None:
        """Ask the generator for round ``r`` of a generator block (once), after ``trials``.

        ``ahead``: before its block begins; the images are held until it does. When
        the block asks for a round it was given ahead, that round is released instead.
        """
        key = (plan.block.label, r)
        if self.client is None or plan.source != "generator":
            return
        if key in self.requested:
            if not ahead and key in self.held:
                self.held.discard(key)
                self.client.release(*key)
            return
        self.requested.add(key)
        if ahead:
            self.held.add(key)
        block = plan.block
        req = ImageRequest(
            session=self.session,
            block=block.label,
            round=r,
            n_images=block.n_trials,
            trials=list(trials),
        )
        self.client.request(
            req,
            images_folder(block, r),
            hold=ahead,
            presentations=block.presentations,
            order_seed=(self.pres.seed, zlib.crc32(block.label.encode()), r),
        )

    def ask_ahead(self, plan: BlockPlan, trials: list[int]) -> None:
        """Ask for a generator block's round 0 before the block begins (held until then).

        Not for a block that a resumed session began before (:meth:`progress_of`).
        """
        if plan.source == "generator" and self.progress_of(plan) is None:
            self.request(plan, 0, trials, ahead=True)

    def ask_next(self, rnd: Round, trials: list[int]) -> None:
        """As the last image of ``rnd`` goes on screen, ask for the round that follows it.

        The block's next round, so that the generator works while that image is shown;
        or, when the block ends with this round (its last, or the generator converged),
        the next block's round 0 if that block shows generated images. Nothing after a
        round of images shown again.
        """
        if rnd.reshow:
            return
        plan, r = rnd.plan, rnd.index
        if r + 1 < plan.block.n_rounds and self.converged(plan, r) is None:
            self.request(plan, r + 1, trials)
            return
        k = self.plans.index(plan)
        if k + 1 < len(self.plans):
            self.ask_ahead(self.plans[k + 1], trials if plan.source == "generator" else [])

    def converged(self, plan: BlockPlan, r: int) -> str | None:
        """Why the generator stopped with round ``r`` of this block (None: it did not)."""
        if self.client is None:
            return None
        return self.client.converged.get((plan.block.label, r))

    # -- between trials ----------------------------------------------------------------
    def between_trials(self) -> None:
        """Count the trial, show the status line, rest or pause when due."""
        self.trials_done += 1
        if self.box is not None:
            self.box.discard(self.where())  # pressed outside a question: not an answer
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

    def where(self) -> dict[str, Any]:
        """The block and round being shown, for log lines ({} between blocks)."""
        rnd = self.round
        if rnd is None:
            return {}
        return {"block": rnd.plan.block.label, "round": rnd.index}


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


@dataclass
class _Links:
    """What the presentation opens besides its window, closed when it ends."""

    client: GeneratorClient | None = None  # the generation worker's images
    box: ResponseBox | None = None  # the response box of the rating screen
    remote: RemoteControl | None = None  # the dashboard's pause, resume and abort

    @classmethod
    def open(
        cls,
        config: PresentConfig,
        plans: list[BlockPlan],
        store: SessionStore,
        loader: ImageLoader,
        log: EventWriter,
    ) -> _Links:
        """Connect to what the protocol's blocks need."""
        protocol, links = config.protocol, cls()
        pres, net = protocol.presentation, protocol.network
        try:
            if any(p.source == "generator" for p in plans):
                links.client = GeneratorClient(
                    protocol.generation.endpoint,
                    store.root,
                    loader,
                    secret_key=net.curve_secret_key,
                    server_public_key=net.curve_public_key,
                    on_event=log,
                )
            if pres.response_stream and any(pres.ratings.rates(p.block.kind) for p in plans):
                links.box = ResponseBox(pres.response_stream, log)
            if config.control:
                links.remote = RemoteControl(config.control, log)
        except BaseException:
            links.close()
            raise
        return links

    def close(self) -> None:
        """Close every link that was opened."""
        for link in (self.client, self.box, self.remote):
            if link is not None:
                link.close()


def _stand_in_folder(protocol: Protocol) -> Path | None:
    """The ``pool`` late-image policy's folder, checked now (None for ``wait``)."""
    pres = protocol.presentation
    if pres.late_image_policy != "pool":
        return None
    base = Path(protocol.source).resolve().parent if protocol.source else Path.cwd()
    folder = (base / pres.pool_folder).resolve()
    list_images(folder)
    return folder


def _ready(runner: Runner, config: PresentConfig, links: _Links, measured, offset) -> None:
    """The frame loop goes real-time, and ``presentation_ready`` says how it is set up."""
    protocol, win = config.protocol, runner.win
    pres = protocol.presentation
    # last: every helper thread exists by now and stays ordinary; the frame loop (and
    # a software-GL display's drawing threads) go first from here on
    realtime = protocol.priority.presentation_realtime and rush_frame_loop("presentation")
    display_realtime = rush_virtual_display() if realtime else None
    runner.log(
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
            {"block": p.block.label, "source": p.source, "folder": p.folder} for p in runner.plans
        ],
        gl_max_texture=runner.max_texture,
        response_stream=links.box.name if links.box is not None else None,
        control=config.control,
    )


def _wait_for_listeners(
    protocol: Protocol, markers: MarkerStream, box: ResponseBox | None, log: EventWriter
) -> None:
    """A little while for the marker stream's readers and the response box to appear."""
    streams = protocol.streams
    if not markers.wait_for_consumers(streams.connect_timeout_s):
        logger.warning("nobody reads the marker stream '%s' yet", streams.markers)
        log("markers_unheard", timeout_s=streams.connect_timeout_s)
    if box is not None and not box.connected.wait(min(streams.connect_timeout_s, 5)):
        logger.warning(
            "response stream '%s' not found yet (still looked for; keys and mouse work)",
            box.name,
        )
        log("response_stream_unheard", stream=box.name)


def run(config: PresentConfig) -> dict[str, Any]:
    """Entry point of the ``eegs present`` process; returns the session's summary."""
    protocol = config.protocol
    pres = protocol.presentation
    plans = resolve_blocks(protocol, config.images_dir)
    pool_folder = _stand_in_folder(protocol)
    store = SessionStore(config.session_dir)
    progress = read_progress(store) if config.resume else None
    store.open(role="presentation", protocol=protocol)
    new_events = EventTail(store.root / EVENTS_FILE)
    new_events.new()  # from here on: what this run's processes write
    log = EventWriter(store)
    loader = ImageLoader()
    links = _Links()
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
        links = _Links.open(config, plans, store, loader, log)
        runner = Runner(
            protocol,
            plans,
            win,
            store=store,
            log=log,
            markers=markers,
            loader=loader,
            client=links.client,
            controls=Controls(pres.keys, config.stop, links.remote),
            status=status_line,
            clock_offset=offset,
            progress=progress,
            box=links.box,
        )
        if pool_folder is not None:
            runner.load_pool(pool_folder)
        runner.warm_up()
        _ready(runner, config, links, measured, offset)
        _wait_for_listeners(protocol, markers, links.box, log)
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
            links.close()
            loader.close()
            if win is not None:
                win.close()
    return {"status": status, **summary}
