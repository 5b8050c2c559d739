"""One trial of ``eegs present``: fixation, stimulus, ratings, ITI, and its log line.

Each phase is a whole number of frames (:func:`durations`, jittered by the protocol).
The fixation lasts its frames and then until the next image is on the GPU, or the
late-image policy gives a stand-in; the stimulus is shown with the photodiode patch
white and the garbage collector off; the blocks that ``presentation.ratings.blocks``
names ask the rating screen; the ``trial`` event records the timing achieved. Markers
go out on the flip that shows what they describe.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pylsl

from app.presentation.controls import Aborted
from app.presentation.images import ImageFailure, StimulusImage, fit_size

if TYPE_CHECKING:
    from app.presentation.block import Round
    from app.presentation.runner import Runner
    from app.presentation.textures import StreamedTexture


@dataclass
class StandIn:
    """A pool image shown in place of a late or failed one."""

    reason: str  # "late" | "failed"
    failure: ImageFailure | None = None


@dataclass
class _Fixation:
    """How the fixation went: the image it waited for, its frames, the trial's first flip."""

    item: StreamedTexture | StandIn
    frames: int
    first: int | None  # frame index of the trial's first flip
    t_first: float | None  # its time on the LSL clock
    late_ms: float


@dataclass
class _Stimulus:
    """The stimulus shown: its texture, image, onset marker and first flip."""

    tex: StreamedTexture
    stand_in: str | None
    image: StimulusImage
    onset: dict[str, Any]
    on_i: int
    t_on: float


def durations(runner: Runner) -> tuple[int, int, int]:
    """Frames of the fixation, the stimulus and the ITI, jittered as the protocol says."""
    t = runner.pres.timing
    hz = runner.pres.screen.refresh_hz

    def frames(base: float, jitter: float) -> int:
        value = base + (runner.rng.uniform(-jitter, jitter) if jitter else 0.0)
        return max(0, int(round(value * hz)))

    return (
        frames(t.fixation_s, t.fixation_jitter_s),
        max(1, frames(t.stimulus_s, t.stimulus_jitter_s)),
        max(1, frames(t.iti_s, t.iti_jitter_s)),
    )


def run_trial(runner: Runner, rnd: Round) -> bool:
    """Fixation, stimulus, (ratings), ITI; logs the trial with its achieved timing.

    Returns False when the round's images stopped coming and no stimulus was shown.
    """
    n_fix, n_stim, n_iti = durations(runner)
    tid = runner.next_trial
    info = {"trial": tid, "block": rnd.plan.block.label, "round": rnd.index}
    runner.current = {**info, "phase": "fixation"}
    fix = _fixation(runner, rnd, info, n_fix)
    if fix is None:
        return False
    stim = _stimulus(runner, rnd, info, fix.item, n_stim)
    first, t_first = (fix.first, fix.t_first) if fix.first is not None else (stim.on_i, stim.t_on)
    runner.markers.on_next_flip("stimulus_offset", **info)
    runner.current["phase"] = "offset"
    rnd.trials.append(tid)
    runner.next_trial += 1
    if rnd.remaining == 0:
        runner.ask_next(rnd, rnd.trials)  # if not asked for already
    rating = None
    last = stim.on_i
    aborted = None
    try:
        if runner.ratings is not None and runner.pres.ratings.rates(rnd.plan.block.kind):
            rating = rate(runner, info)
        runner.current["phase"] = "iti"
        for _ in range(n_iti):
            last, _t = runner.frame("blank")
    except Aborted as err:
        aborted = err.reason  # the stimulus was shown whole: the trial counts
        raise
    finally:
        if stim.stand_in is None:
            runner.stager.recycle(stim.tex)
        timing = {"n_stim": n_stim, "n_iti": n_iti, "first": first, "t_first": t_first}
        _log_trial(runner, info, fix, stim, timing, last, rating, aborted)
    runner.current = {}
    return True


def _fixation(runner: Runner, rnd: Round, info: dict[str, Any], n_fix: int) -> _Fixation | None:
    """``n_fix`` fixation frames, then more until an image is ready; None: cancelled."""
    timeout = runner.pres.late_image_timeout_s
    first = t_fix = None
    late_t0 = None
    k = 0
    while True:
        if k >= n_fix:
            item = runner.stager.ready.popleft() if runner.stager.ready else None
            if item is not None:
                break
            now = pylsl.local_clock()
            if rnd.dead is None and now - rnd.t_progress > timeout:
                worker = runner.restarts.restarting("worker", grace_s=timeout)
                if rnd.plan.source == "generator" and worker:  # restarting, or just back
                    rnd.t_progress = now - timeout + 1.0  # ask again in 1 s
                else:
                    rnd.dead = f"no image for {timeout:g} s (late_image_timeout_s)"
            if rnd.dead is not None:
                runner.log("trial_cancelled", **info, reason=rnd.dead)
                return None
            if runner.pres.late_image_policy == "pool":
                item = StandIn("late")
                break
            if late_t0 is None:
                late_t0 = now
                runner.log("image_late", **info, policy="wait")
        if first is None:
            runner.markers.on_next_flip("fixation_onset", **info)
        i, t = runner.frame("fixation", runner.fixation.draw)
        if first is None:
            first, t_fix = i, t
        k += 1
    late_ms = 0.0 if late_t0 is None else (pylsl.local_clock() - late_t0) * 1e3
    return _Fixation(item, k, first, t_fix, late_ms)


def _stimulus(
    runner: Runner, rnd: Round, info: dict[str, Any], item: Any, n_stim: int
) -> _Stimulus:
    """The image (or a stand-in) for ``n_stim`` frames, from the ``stimulus_onset`` flip."""
    if isinstance(item, StandIn):
        tex = runner.stand_in_texture()
        stand_in = item.reason
        if item.reason == "failed":
            rnd.remaining -= 1
    else:
        tex, stand_in = item, None
        rnd.remaining -= 1
    image = tex.image
    runner.image.image = tex
    runner.image.size = fit_size(image.size, runner.pres.screen.image_size)
    if rnd.remaining == 0:
        # the round's last image is about to show: ask for the next round now, so the
        # generator works while it is on screen (a non-blocking hand-off to a thread)
        runner.ask_next(rnd, [*rnd.trials, info["trial"]])
    onset = runner.markers.on_next_flip(
        "stimulus_onset",
        **info,
        image=str(image.ref.path),
        sha256=image.sha256,
        label=image.ref.label,
        stand_in=stand_in,
    )
    runner.current["phase"] = "stimulus"
    on_i = t_on = None
    gc.disable()  # no collector pause while a stimulus is on screen
    try:
        for _ in range(n_stim):
            i, t = runner.frame("stimulus", runner.image.draw, stimulus=True)
            if on_i is None:
                on_i, t_on = i, t
    finally:
        gc.enable()
    return _Stimulus(tex, stand_in, image, onset, on_i, t_on)


def rate(runner: Runner, info: dict[str, Any]) -> dict[str, Any]:
    """The rating screen of one trial, with its markers: one per question, then answers.

    ``rating_onset`` (trial, block, round, scale, low, high) goes out on the flip that
    first shows each question; ``rating`` (trial, block, round, each scale's value,
    ``rt_ms``, ``input``, low, high; a scale that timed out has no value) on the first
    frame after the last answer.
    """
    cfg = runner.pres.ratings
    scale_range = {"low": cfg.low, "high": cfg.high}
    runner.current["phase"] = "rating"
    runner.controls.extra = runner.ratings.keys
    try:
        rating = runner.ratings.run(
            lambda phase, draw: runner.frame(phase, draw),
            lambda: runner.controls.pressed,
            onset=lambda scale: runner.markers.on_next_flip(
                "rating_onset", **info, scale=scale, **scale_range
            ),
            box=runner.box,
            where=info,
        )
    finally:
        runner.controls.extra = []
    runner.markers.on_next_flip("rating", **info, **rating, **scale_range)
    return rating


def _log_trial(
    runner: Runner,
    info: dict[str, Any],
    fix: _Fixation,
    stim: _Stimulus,
    timing: dict[str, Any],
    last: int,
    rating: dict[str, Any] | None,
    aborted: str | None,
) -> None:
    """The ``trial`` event, once the offset flip has happened: the timing achieved."""
    off_i = stim.on_i + timing["n_stim"]
    if off_i >= len(runner.frames):  # the offset flip never happened
        return
    frames = runner.frames
    t_off = frames.flip_lsl[off_i]
    shown_ms = (t_off - stim.t_on) * 1e3
    runner.log(
        "trial",
        **info,
        image=stim.onset["image"],
        sha256=stim.image.sha256,
        label=stim.image.ref.label,
        stand_in=stim.stand_in,
        # when the image became usable by the frame loop (decoded, its file stored)
        image_ready_lsl=stim.image.t_ready if stim.stand_in is None else None,
        late_ms=round(fix.late_ms, 3),
        fixation_frames=fix.frames,
        fixation_ms=round((stim.t_on - timing["t_first"]) * 1e3, 3),
        stimulus_frames_planned=timing["n_stim"],
        stimulus_frames=int(round(shown_ms / (runner.period * 1e3))),
        stimulus_ms=round(shown_ms, 3),
        iti_frames=timing["n_iti"],
        dropped_frames=frames.dropped(timing["first"], last),
        rating=rating,
        t_onset_lsl=stim.t_on,
        t_offset_lsl=t_off,
        frame_intervals_ms=np.round(frames.intervals_ms(timing["first"], last), 3),
        aborted=aborted,
    )
