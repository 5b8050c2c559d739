"""Schema of a protocol file: the single source of every experimental parameter.

A protocol is a TOML file validated on load. Unknown keys are errors so that a typo
in a lab's protocol never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator

from experiment_protocols._section import Section
from experiment_protocols.bounded import InputRejected, parse_toml, read_limited
from experiment_protocols.brain_model import BrainModelSettings
from experiment_protocols.decoder import Decoder
from experiment_protocols.generation import Generation
from experiment_protocols.presentation import Presentation

PROTOCOL_DIR = Path(__file__).resolve().parent
DEFAULT_PROTOCOL = PROTOCOL_DIR / "default.toml"


#: A protocol file is a page of settings; anything larger is the wrong file.
MAX_PROTOCOL_BYTES = 1 << 20


class ProtocolError(ValueError):
    """A protocol file that cannot be used, with the file and field that are wrong."""

    def __init__(self, path: str | Path | None, field: str, message: str) -> None:
        self.path = None if path is None else Path(path)
        self.field = field
        self.message = message
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}field '{field}': {message}")


class Meta(Section):
    """Who wrote the protocol and what it is for."""

    name: str = "unnamed"
    description: str = ""
    version: int = Field(1, ge=1, description="Version of the protocol file format.")


class Streams(Section):
    """Which LSL streams the session reads."""

    eeg: str = Field("EEGS-EEG", min_length=1, description="Name of the EEG stream.")
    eeg_type: str = Field("EEG", description="LSL type of the EEG stream ('' = any).")
    markers: str = Field("EEGS-markers", min_length=1, description="Marker stream name.")
    sfreq: float | None = Field(
        None, gt=0, le=100_000, description="Expected sampling rate of the EEG stream; None = any."
    )
    connect_timeout_s: float = Field(10.0, gt=0, le=3600)
    buffer_s: float = Field(
        5.0,
        gt=0,
        le=600,
        description="Ring buffer length of the EEG: longer than an epoch plus any stall; "
        "the whole buffer is shifted on every chunk, so longer costs CPU.",
    )
    gap_s: float = Field(
        1.0, gt=0, le=3600, description="No EEG sample for this long counts as a gap."
    )


class Epochs(Section):
    """Which markers are epoched, and the epoch window (seconds, marker = 0)."""

    event: str = Field("stimulus_onset", min_length=1)
    tmin: float = Field(-0.2, ge=-60, le=60)
    tmax: float = Field(1.0, ge=-60, le=60)
    baseline: tuple[float, float] | None = (-0.2, 0.0)

    @model_validator(mode="after")
    def _check_window(self) -> Epochs:
        if self.tmax <= self.tmin:
            raise ValueError(f"tmax ({self.tmax}) must be greater than tmin ({self.tmin})")
        if self.baseline is not None:
            lo, hi = self.baseline
            if not (self.tmin <= lo < hi <= self.tmax):
                raise ValueError(
                    f"baseline {list(self.baseline)} must lie inside "
                    f"[tmin, tmax] = [{self.tmin}, {self.tmax}] with start < end"
                )
        return self


class Preprocessing(Section):
    """Online preprocessing: causal IIR filters on the stream, then per-epoch steps."""

    notch_hz: list[Annotated[float, Field(gt=0, le=50_000)]] = Field(
        default_factory=lambda: [50.0],
        max_length=16,
        description="Line-noise notches (the line frequency and harmonics), each below the "
        "stream's Nyquist frequency.",
    )
    l_freq: float | None = Field(0.5, gt=0)
    h_freq: float | None = Field(40.0, gt=0)
    filter_order: int = Field(4, ge=1, le=10, description="Butterworth order.")
    resample_hz: float | None = Field(250.0, gt=0, le=20_000)
    montage: list[str] = Field(
        default_factory=list,
        description="Channels to keep, in order; empty keeps every channel.",
    )
    rename: dict[str, str] = Field(
        default_factory=dict, description="Stream channel name -> montage name."
    )

    @model_validator(mode="after")
    def _check_band(self) -> Preprocessing:
        if self.l_freq and self.h_freq and self.l_freq >= self.h_freq:
            raise ValueError(f"l_freq ({self.l_freq}) must be below h_freq ({self.h_freq})")
        if len(set(self.montage)) != len(self.montage):
            raise ValueError("montage lists a channel twice")
        if len(set(self.notch_hz)) != len(self.notch_hz):
            raise ValueError("notch_hz lists a frequency twice")
        return self


class Quality(Section):
    """Thresholds that flag (never silently drop) an epoch, in µV."""

    flat_uv: float = Field(0.5, ge=0, description="Peak-to-peak below this is flat.")
    saturation_uv: float = Field(3000.0, gt=0, description="|value| at or above this is saturated.")
    reject_uv: float = Field(150.0, gt=0, description="Peak-to-peak above this.")


class Network(Section):
    """ZeroMQ endpoints. Non-loopback endpoints require CURVE keys."""

    epochs_endpoint: str = "tcp://127.0.0.1:5556"
    curve_secret_key: str | None = Field(
        None, description="Path of this process's CURVE secret key file."
    )
    curve_public_key: str | None = Field(
        None, description="Path of the peer's CURVE public key file (clients)."
    )
    curve_authorized_dir: str | None = Field(
        None,
        description="Folder of public keys allowed to connect (servers); `eegs keys` makes "
        "it. Allowing any key ('*') is refused.",
    )

    @field_validator("curve_authorized_dir")
    @classmethod
    def _no_allow_any(cls, v: str | None) -> str | None:
        if v is not None and v.strip() in ("*", ""):
            raise ValueError(
                f"{v!r} would let any key in; name a folder of authorised public keys "
                "(`eegs keys` writes one)"
            )
        return v


class Recording(Section):
    """Whole-session XDF recording through LabRecorder."""

    enabled: bool = True
    extra_streams: list[str] = Field(
        default_factory=list, description="Names of further LSL streams to record."
    )
    min_free_mb: float = Field(
        16.0,
        ge=0,
        le=1_000_000,
        description="The session stops cleanly (failed: disk full) when its disk has less "
        "free space than this, so that the recording closes whole; resume it on another "
        "disk (`eegs resume SESSION --to DIR`).",
    )
    warn_free_mb: float = Field(
        500.0,
        ge=0,
        le=1_000_000,
        description="Below this much free space the experimenter is warned (disk_low).",
    )


class Priority(Section):
    """Niceness of each process (-20 runs first, 19 last).

    The frame loop and the epoching must run when their time comes, also on a machine
    shared with the worker, the brain model and the experimenter's browser. Below 0
    needs root, CAP_SYS_NICE or a limits.d ``nice`` entry (PsychoPy's Linux set-up);
    without it the process says so and runs at its default priority.
    """

    presentation: int = Field(-10, ge=-20, le=19, description="The presentation's niceness.")
    presentation_realtime: bool = Field(
        True,
        description="The frame loop at real-time priority (PsychoPy's core.rush; on Linux "
        "SCHED_RR, with Mesa's software-GL threads that draw its frames and the Xvfb server "
        "of --headless) where allowed.",
    )
    acquisition: int = Field(-10, ge=-20, le=19, description="The acquisition's niceness.")
    acquisition_realtime: bool = Field(
        True,
        description="The acquisition's threads (buffer, epoching, ZeroMQ) at real-time "
        "priority (Linux: SCHED_RR) where allowed, so that a browser or the generation "
        "worker on the same cores cannot delay an epoch.",
    )
    dashboard: int = Field(10, ge=-20, le=19, description="The dashboard server's niceness.")


class Protocol(Section):
    """A whole protocol file."""

    meta: Meta = Field(default_factory=Meta)
    streams: Streams = Field(default_factory=Streams)
    epochs: Epochs = Field(default_factory=Epochs)
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    quality: Quality = Field(default_factory=Quality)
    network: Network = Field(default_factory=Network)
    recording: Recording = Field(default_factory=Recording)
    decoder: Decoder = Field(default_factory=Decoder)
    generation: Generation = Field(default_factory=Generation)
    presentation: Presentation = Field(default_factory=Presentation)
    brain_model: BrainModelSettings = Field(default_factory=BrainModelSettings)
    priority: Priority = Field(default_factory=Priority)

    source: str | None = Field(None, exclude=True, description="File it came from.")
    sha256: str | None = Field(None, exclude=True, description="Hash of that file.")

    @model_validator(mode="after")
    def _check_nyquist(self) -> Protocol:
        sfreq = self.streams.sfreq
        if sfreq is None:  # checked against the stream's rate when it connects
            return self
        pre = self.preprocessing
        for name, freq in [("notch_hz", f) for f in pre.notch_hz] + [("h_freq", pre.h_freq)]:
            if freq is not None and freq >= sfreq / 2:
                raise ValueError(
                    f"preprocessing.{name} = {freq:g} Hz is not below the Nyquist frequency "
                    f"({sfreq / 2:g} Hz) of streams.sfreq = {sfreq:g} Hz"
                )
        return self

    @model_validator(mode="after")
    def _check_buffer(self) -> Protocol:
        need = self.epochs.tmax - self.epochs.tmin + 1.0
        if self.streams.buffer_s < need:
            raise ValueError(
                f"streams.buffer_s = {self.streams.buffer_s} s cannot hold an epoch of "
                f"{self.epochs.tmax - self.epochs.tmin:g} s plus 1 s of margin (>= {need:g} s)"
            )
        return self

    def with_overrides(self, overrides: dict[str, Any]) -> Protocol:
        """Return a copy with keys replaced and validated.

        Keys are ``"section.key"`` (``"epochs.tmin"``) or a whole ``"section"``.
        """
        data = self.model_dump()
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, _, key = dotted.partition(".")
            if key:
                data[section][key] = value
            else:  # a whole section
                data[section] = value
        return _validate(data, self.source, self.sha256)


def _plain(value: Any) -> Any:
    """A value set from code (an override) as JSON: a numpy scalar as its number, else text."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    return str(value)


def _validate(data: dict[str, Any], source: str | None, sha: str | None) -> Protocol:
    """Validate strictly: no bool, string or fractional number is coerced into a number.

    The data go through JSON so that pydantic's strict mode reads TOML arrays as tuples
    where a field is one; a TOML date, which no key takes, is refused by its field.
    """
    try:
        text = json.dumps(data, default=_plain)
    except (TypeError, ValueError) as err:  # not a protocol's kind of value at all
        raise ProtocolError(source, "(file)", f"not a protocol: {err}") from None
    try:
        protocol = Protocol.model_validate_json(text, strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling against experiment_protocols/schema.py)"
        elif "input" in first and not isinstance(first["input"], dict):
            msg = f"{msg}; got {str(first['input'])[:80]!r}"
        raise ProtocolError(source, field, msg) from None
    protocol.source = source
    protocol.sha256 = sha
    return protocol


def load_protocol(path: str | Path | None = None) -> Protocol:
    """Read and validate a protocol file; ``None`` loads the shipped default.

    The file is read by the project's bounded parser (:mod:`experiment_protocols.bounded`):
    a small regular file, nesting, integer sizes and NUL-free text checked before the
    schema sees it; every refusal is a :class:`ProtocolError` naming the file and field.
    """
    path = Path(path) if path is not None else DEFAULT_PROTOCOL
    try:
        raw = read_limited(path, max_bytes=MAX_PROTOCOL_BYTES, what="protocol file")
        data = parse_toml(raw, what="protocol file", max_bytes=MAX_PROTOCOL_BYTES)
    except InputRejected as err:
        raise ProtocolError(path, err.where or "(file)", err.reason) from None
    return _validate(data, str(path), hashlib.sha256(raw).hexdigest())
