"""The ``[presentation]`` protocol section: what the participant sees, and when.

Read by ``eegs present`` (the PsychoPy trial runner) and ``eegs timing-check``.
Durations are in seconds and are shown as whole frames of the display; a duration
that cannot be shown (a stimulus shorter than one frame) is refused on load.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from experiment_protocols._section import Section

BlockKind = Literal["calibration", "closed_loop", "validation"]
Corner = Literal["bottom_left", "bottom_right", "top_left", "top_right"]


class Block(Section):
    """One block of trials: where its images come from and how many are shown."""

    kind: BlockKind
    name: str = Field("", description="Name in markers and logs; '' = the kind.")
    n_trials: int = Field(40, ge=1, le=10_000, description="Trials per round.")
    n_rounds: int = Field(1, ge=1, le=1_000, description="Rounds (closed loop: generations).")
    source: Literal["folder", "generator"] = Field(
        "folder",
        description="'folder': images from `folder`; 'generator': batches over ZeroMQ.",
    )
    folder: str = Field(
        "",
        description="Image folder (one subfolder per class label, or flat); relative "
        "paths are relative to the protocol file; '' = the --images folder.",
    )
    presentations: int = Field(
        1,
        ge=1,
        le=20,
        description="Generator blocks: each image of a round is shown this many times, in "
        "shuffled passes; the worker averages its rewards into one observation.",
    )

    @model_validator(mode="after")
    def _check_presentations(self) -> Block:
        if self.presentations > 1 and self.source != "generator":
            raise ValueError(
                f"presentations = {self.presentations} needs source = 'generator' (a folder "
                "block draws new images; repeat an image by listing it again)"
            )
        return self

    @property
    def label(self) -> str:
        """Name used in markers and logs."""
        return self.name or self.kind

    @property
    def trials_per_round(self) -> int:
        """Trials a round shows: each of its ``n_trials`` images ``presentations`` times."""
        return self.n_trials * self.presentations


class Timing(Section):
    """Trial timing; each phase lasts base ± uniform jitter, rounded to whole frames."""

    fixation_s: float = Field(0.5, ge=0)
    fixation_jitter_s: float = Field(0.1, ge=0)
    stimulus_s: float = Field(1.0, gt=0)
    stimulus_jitter_s: float = Field(0.0, ge=0)
    iti_s: float = Field(1.0, gt=0, description="Blank inter-trial interval.")
    iti_jitter_s: float = Field(0.2, ge=0)


class Screen(Section):
    """The participant's display."""

    index: int = Field(0, ge=0, description="Which screen (0 = primary).")
    fullscreen: bool = True
    size_px: tuple[int, int] = Field((1920, 1080), description="Window size if not full.")
    refresh_hz: float = Field(60.0, gt=0, description="Refresh rate the protocol expects.")
    check_refresh: bool = Field(
        True, description="Measure the refresh rate at start; refuse another one."
    )
    refresh_tolerance_hz: float = Field(1.0, gt=0)
    dropped_frame_margin_ms: float = Field(
        4.0, gt=0, description="A flip interval over one frame plus this counts as dropped."
    )
    units: Literal["height", "pix", "norm", "deg"] = Field(
        "height", description="Units of image_size ('deg' needs a calibrated monitor)."
    )
    monitor: str = Field("", description="PsychoPy monitor name (distance, width).")
    image_size: tuple[float, float] = Field(
        (0.8, 0.8), description="Box the image is fitted into, aspect kept, in units."
    )
    fixation_height: float = Field(
        0.04, gt=0, lt=1, description="Fixation cross size, as a fraction of screen height."
    )
    background: str = Field("black", description="Window colour (a PsychoPy colour name).")
    text_color: str = "white"
    pace_frames: bool = Field(
        False,
        description="Sleep to the next frame time before each flip: for displays without "
        "vsync (Xvfb, tests); never on a lab display.",
    )
    upload_budget_ms: float = Field(
        2.0, gt=0, description="Texture upload time per blank frame, in strips."
    )


class Photodiode(Section):
    """A corner square: white while a stimulus is on, black otherwise."""

    enabled: bool = False
    size_px: int = Field(60, ge=4)
    corner: Corner = "bottom_left"
    channel: str = Field("Photodiode", min_length=1, description="EEG channel it feeds.")


class Ratings(Section):
    """Self-report after each stimulus of the rated blocks (Self-Assessment-Manikin-style).

    Answered with the mouse, a number key, or a response box publishing on LSL
    (``presentation.response_stream``). The calibration and validation blocks are rated by
    default: the participant's own valence and arousal of labelled images (the personal
    reward's training targets); closed-loop rounds are not, so that they stay short.
    """

    enabled: bool = Field(
        True, description="Ask the scales after each stimulus of the blocks in `blocks`."
    )
    blocks: list[BlockKind] = Field(
        default_factory=lambda: ["calibration", "validation"],
        description="Kinds of the blocks whose trials are rated ([] = none).",
    )
    scales: list[Literal["valence", "arousal"]] = Field(
        default_factory=lambda: ["valence", "arousal"], min_length=1
    )
    low: int = Field(1, description="Lowest point; number keys answer when high <= 9.")
    high: int = 9
    timeout_s: float = Field(0.0, ge=0, description="0 waits for an answer.")
    valence_labels: tuple[str, str] = ("unpleasant", "pleasant")
    arousal_labels: tuple[str, str] = ("calm", "excited")

    @model_validator(mode="after")
    def _check_scale(self) -> Ratings:
        if self.high <= self.low:
            raise ValueError(f"high ({self.high}) must be greater than low ({self.low})")
        if len(set(self.scales)) != len(self.scales):
            raise ValueError("scales lists a scale twice")
        if len(set(self.blocks)) != len(self.blocks):
            raise ValueError("blocks lists a block kind twice")
        return self

    def rates(self, kind: str) -> bool:
        """Whether trials of a block of this kind are rated."""
        return self.enabled and kind in self.blocks


class Keys(Section):
    """Experimenter and participant keys (PsychoPy key names)."""

    pause: str = "p"
    resume: str = "r"
    abort: str = "escape"
    proceed: str = Field("space", description="Participant: continue after a text screen.")

    @model_validator(mode="after")
    def _distinct(self) -> Keys:
        keys = [self.pause, self.resume, self.abort, self.proceed]
        if len(set(keys)) != len(keys):
            raise ValueError(f"pause, resume, abort and proceed keys must differ; got {keys}")
        return self


class TimingCheck(Section):
    """``eegs timing-check``: photodiode flashes against their markers."""

    n_flashes: int = Field(50, ge=2)
    flash_s: float = Field(0.1, gt=0)
    interval_s: float = Field(0.5, gt=0, description="Flash onset to next flash onset.")
    max_lag_ms: float = Field(200.0, gt=0, description="Light later than this is missed.")


class Presentation(Section):
    """The whole ``[presentation]`` section."""

    seed: int = Field(0, description="Seed of image order and jitter.")
    blocks: list[Block] = Field(
        default_factory=lambda: [
            Block(kind="calibration", n_trials=40),
            Block(kind="closed_loop", n_trials=8, n_rounds=5, source="generator"),
            Block(kind="validation", n_trials=20),
        ],
        min_length=1,
    )
    late_image_policy: Literal["wait", "pool"] = Field(
        "wait",
        description="Next image not ready: 'wait' keeps the fixation and logs it; "
        "'pool' shows an image from pool_folder.",
    )
    pool_folder: str = Field("", description="Stand-in images for the 'pool' policy.")
    response_stream: str = Field(
        "",
        description="Name of an LSL stream of response-box key presses ('' = none): one "
        "string channel, each sample a JSON object with a string (or integer) 'key', e.g. "
        '{"key": "7"}, or a bare key name such as 7. A press of a whole number from '
        "ratings.low to ratings.high answers the rating screen's current question; presses "
        "elsewhere, or stamped before the question appeared, are ignored (logged). Keyboard "
        "and mouse keep working.",
    )
    late_image_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Generator blocks: a round whose images have not come after this "
        "long (from generation.endpoint) ends the block.",
    )
    reshow_lost_trials: bool = Field(
        True,
        description="Generator blocks: at the block's end, show again once each image whose "
        "trial lost its epoch (acquisition restarted, EEG gap); the lost trial stays flagged "
        "(trial_lost) and the new one gets a trial id of its own.",
    )
    instructions: str = (
        "Look at the cross in the middle of the screen and watch each picture.\n\n"
        "Press SPACE to start."
    )
    rest_text: str = "Take a short rest.\n\nPress SPACE when you are ready to go on."
    text_min_s: float = Field(1.0, ge=0, description="Text screens stay at least this long.")
    wait_for_key: bool = Field(
        True, description="Text screens wait for the proceed key (else end after text_min_s)."
    )
    rest_every_n_trials: int = Field(40, ge=0, description="0 = no rest breaks.")
    timing: Timing = Field(default_factory=Timing)
    screen: Screen = Field(default_factory=Screen)
    photodiode: Photodiode = Field(default_factory=Photodiode)
    ratings: Ratings = Field(default_factory=Ratings)
    keys: Keys = Field(default_factory=Keys)
    timing_check: TimingCheck = Field(default_factory=TimingCheck)

    @model_validator(mode="after")
    def _check_frames(self) -> Presentation:
        """Refuse durations the display cannot show: every phase is whole frames."""
        frame = 1.0 / self.screen.refresh_hz
        t = self.timing
        eps = 1e-9
        for name, base, jitter, minimum in (
            ("fixation", t.fixation_s, t.fixation_jitter_s, 0.0),
            ("stimulus", t.stimulus_s, t.stimulus_jitter_s, frame),
            ("iti", t.iti_s, t.iti_jitter_s, frame),
        ):
            if base - jitter < minimum - eps:
                if minimum == 0:
                    reason = "negative"
                else:
                    reason = (
                        f"shorter than one frame ({frame * 1e3:.2f} ms at "
                        f"screen.refresh_hz = {self.screen.refresh_hz:g})"
                    )
                raise ValueError(
                    f"timing.{name}_s - timing.{name}_jitter_s = {base - jitter:.4f} s is {reason}"
                )
        tc = self.timing_check
        if tc.flash_s < frame - eps:
            raise ValueError(
                f"timing_check.flash_s = {tc.flash_s} s is shorter than one frame "
                f"({frame * 1e3:.2f} ms)"
            )
        if tc.interval_s - tc.flash_s < frame - eps:
            raise ValueError("timing_check.interval_s must exceed flash_s by at least one frame")
        if self.late_image_policy == "pool" and not self.pool_folder:
            raise ValueError("late_image_policy = 'pool' needs pool_folder")
        return self
