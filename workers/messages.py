"""Typed, versioned messages that processes exchange over ZeroMQ.

A message is a multipart ZeroMQ message: frame 0 is a JSON header validated by one
of the models below (its ``type`` picks the model, its ``v`` must equal
:data:`SCHEMA_VERSION`); any further frames are raw arrays described in the header.
A message that does not validate raises :class:`MessageError`, which a service turns
into an :class:`ErrorReply` instead of crashing.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from experiment_protocols.bounded import InputRejected, NonFinite, parse_json

SCHEMA_VERSION = 2  # 2: StatusReply names the device, GPU memory and queue
MAX_HEADER_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 256 << 20


class MessageError(InputRejected):
    """A message that cannot be accepted: malformed, oversize or of another version."""


#: A marker is a line of JSON; anything larger or deeper is refused before it is used.
MAX_MARKER_BYTES = 64 << 10
#: Largest trial id: an int32, so that it fits every later use (epoch file names, MNE and
#: BIDS event codes) and a stray huge id cannot push the numbering of later trials away.
MAX_TRIAL_ID = 2**31 - 1
#: No round waits longer than an hour for its images (the protocol's own bound too).
MAX_DEADLINE_S = 3600.0
#: Most trials one image request may list, most channels one epoch may carry.
MAX_LISTED_TRIALS = 4096
MAX_CHANNELS = 1024

TrialId = Annotated[int, Field(ge=0, le=MAX_TRIAL_ID)]


def trial_id_of(value: Any) -> int | None:
    """``value`` if it is a valid trial id (an int from 0 to :data:`MAX_TRIAL_ID`), else None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TRIAL_ID:
        return None
    return value


def _parse(text: str | bytes, what: str, max_bytes: int, non_finite: NonFinite, nulled=None) -> Any:
    try:
        return parse_json(
            text, what=what, max_bytes=max_bytes, non_finite=non_finite, nulled=nulled
        )
    except InputRejected as err:
        raise MessageError(err.reason, err.where, err.what) from None


def _strict(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strict(v) for v in obj]
    return obj


def dumps_marker(marker: dict[str, Any]) -> str:
    """A marker as strict JSON, which :func:`parse_marker` takes: a non-finite number is null."""
    return json.dumps(_strict(marker), allow_nan=False)


def parse_marker(text: str, nulled: list[str] | None = None) -> dict[str, Any]:
    """One JSON marker of the presentation's stream; raises :class:`MessageError`.

    Read by the project's bounded parser; NaN, Infinity and numbers that overflow read as
    None (refusing a lab's whole marker would lose its trial; each such field is named in
    ``nulled``), so no reader downstream ever sees a non-finite number.
    """
    marker = _parse(text, "marker", MAX_MARKER_BYTES, "null", nulled)
    if not isinstance(marker, dict):
        raise MessageError(f"expected a JSON object, got {type(marker).__name__}", what="marker")
    if not isinstance(marker.get("event"), str):
        raise MessageError("no string 'event' field", what="marker")
    return marker


class Message(BaseModel):
    """Base of every message type."""

    model_config = ConfigDict(extra="forbid")
    type: str
    v: int = SCHEMA_VERSION
    registry: ClassVar[dict[str, type[Message]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        default = cls.model_fields["type"].default
        if isinstance(default, str):
            Message.registry[default] = cls


class ArraySpec(BaseModel):
    """Shape and dtype of one array frame (at most 4 dimensions of at most 2**31 - 1)."""

    model_config = ConfigDict(extra="forbid")
    shape: tuple[Annotated[int, Field(ge=0, le=2**31 - 1)], ...] = Field(max_length=4)
    dtype: Literal["float32", "float64", "uint8", "int64"]


class EpochMessage(Message):
    """One preprocessed epoch, in µV, shape (n_channels, n_times)."""

    type: Literal["epoch"] = "epoch"
    session: str
    trial_id: TrialId
    marker: dict[str, Any]
    ch_names: list[str] = Field(max_length=MAX_CHANNELS)
    sfreq: float = Field(gt=0, le=100_000)
    tmin: float = Field(ge=-60, le=60)
    quality: dict[str, Any]
    window_end_lsl: float
    sent_lsl: float
    arrays: list[ArraySpec]

    @classmethod
    def of(
        cls,
        data: np.ndarray,
        *,
        session: str,
        trial_id: int,
        marker: dict[str, Any],
        ch_names: list[str],
        sfreq: float,
        tmin: float,
        quality: dict[str, Any] | None = None,
    ) -> EpochMessage:
        """An epoch that is not live (stored, simulated): no LSL times."""
        return cls(
            session=session,
            trial_id=trial_id,
            marker=marker,
            ch_names=list(ch_names),
            sfreq=sfreq,
            tmin=tmin,
            quality=quality if quality is not None else {"flags": []},
            window_end_lsl=0.0,
            sent_lsl=0.0,
            arrays=[array_spec(data)],
        )


class ErrorReply(Message):
    """Answer to a request that could not be served."""

    type: Literal["error"] = "error"
    error: str
    detail: str = ""


def encode(msg: Message, arrays: tuple[np.ndarray, ...] = ()) -> list[bytes]:
    """Serialise a message and its arrays into ZeroMQ frames."""
    header = msg.model_dump_json().encode()
    return [header, *(np.ascontiguousarray(a).tobytes() for a in arrays)]


def decode(frames: list[bytes]) -> tuple[Message, list[np.ndarray]]:
    """Validate frames into a message and its arrays; raises :class:`MessageError`."""
    if not frames:
        raise MessageError("empty message")
    total = sum(len(f) for f in frames)
    if total > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {total} bytes exceeds {MAX_MESSAGE_BYTES}")
    if len(frames[0]) > MAX_HEADER_BYTES:
        raise MessageError(f"header of {len(frames[0])} bytes exceeds {MAX_HEADER_BYTES}")
    raw = _parse(frames[0], "header", MAX_HEADER_BYTES, "refuse")
    if not isinstance(raw, dict):
        raise MessageError("header must be a JSON object")
    if type(raw.get("v")) is not int or raw["v"] != SCHEMA_VERSION:  # true == 1 in Python
        raise MessageError(f"schema version {raw.get('v')!r}; this build speaks {SCHEMA_VERSION}")
    kind = raw.get("type")
    model = Message.registry.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise MessageError(f"unknown message type {str(kind)[:80]!r}")
    try:
        msg = model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise MessageError(f"{model.__name__}.{loc}: {first['msg']}") from None
    specs = getattr(msg, "arrays", [])
    if len(specs) != len(frames) - 1:
        raise MessageError(f"header names {len(specs)} arrays, got {len(frames) - 1} frames")
    arrays = []
    for spec, frame in zip(specs, frames[1:], strict=True):
        dtype = np.dtype(spec.dtype)
        if math.prod(spec.shape) * dtype.itemsize != len(frame):
            raise MessageError(f"array frame of {len(frame)} bytes does not match {spec}")
        arrays.append(np.frombuffer(frame, dtype=dtype).reshape(spec.shape))
    return msg, arrays


def array_spec(array: np.ndarray) -> ArraySpec:
    """Describe an array for a message header."""
    return ArraySpec(shape=array.shape, dtype=str(array.dtype))


# -- images: presentation <-> generation worker -----------------------------------------
#
# Request/reply. The generation worker binds a ROUTER (or REP) socket at the protocol's
# ``generation.endpoint``; the presentation connects a DEALER and sends an empty
# delimiter frame, then an :class:`ImageRequest`. The answer is an :class:`ImageBatch`
# (or an :class:`ErrorReply`) behind the same empty delimiter (a REP socket adds it by
# itself; a ROUTER replies ``[identity, b"", *frames]``).


class ImageRequest(Message):
    """The presentation asks for the images of one round.

    ``trials`` are the trial ids shown in the previous round: the batch should be made
    from their epochs (empty for round 0).
    """

    type: Literal["image_request"] = "image_request"
    session: str
    block: str
    round: int = Field(ge=0, le=MAX_TRIAL_ID)
    n_images: int = Field(ge=1, le=256)
    trials: list[TrialId] = Field(default_factory=list, max_length=MAX_LISTED_TRIALS)
    deadline_s: float | None = Field(
        None,
        gt=0,
        le=MAX_DEADLINE_S,
        description="Answer within this many seconds (None: the worker's default).",
    )


class ImageInfo(BaseModel):
    """One image of a batch: its name, optional class label and where it came from."""

    model_config = ConfigDict(extra="forbid")
    image_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    label: str | None = None
    provenance: dict[str, Any] = Field(
        default_factory=dict,
        description="seed, parents, backend, model ids, embedding file, ...: kept as sent.",
    )


class ImageBatch(Message):
    """The images of one round, one frame per image.

    A frame is either an encoded image file (PNG) as a 1-D uint8 array, or raw pixels
    as a (height, width, 3 or 4) uint8 array.
    """

    type: Literal["image_batch"] = "image_batch"
    session: str
    round: int = Field(ge=0, le=MAX_TRIAL_ID)
    images: list[ImageInfo] = Field(min_length=1)
    arrays: list[ArraySpec]
    deadline_missed: bool = Field(
        False, description="The deadline came first: these are the images that were ready."
    )
    converged: bool = Field(False, description="The generator's stopping rule has fired.")
    stop_reason: str = ""
    timing_ms: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_frame_per_image(self) -> ImageBatch:
        if len(self.arrays) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.arrays)} frames")
        for spec in self.arrays:
            raw = len(spec.shape) == 3 and spec.shape[2] in (3, 4)
            if spec.dtype != "uint8" or not (len(spec.shape) == 1 or raw):
                raise ValueError(f"an image frame must be PNG bytes or pixels, got {spec}")
        return self


def encode_image_batch(
    session: str, round_: int, images: list[tuple[ImageInfo, bytes | np.ndarray]]
) -> list[bytes]:
    """Frames of an :class:`ImageBatch` from ``(info, PNG bytes or uint8 pixels)`` pairs."""
    arrays = tuple(
        np.frombuffer(img, np.uint8) if isinstance(img, bytes) else np.asarray(img, np.uint8)
        for _, img in images
    )
    msg = ImageBatch(
        session=session,
        round=round_,
        images=[info for info, _ in images],
        arrays=[array_spec(a) for a in arrays],
    )
    return encode(msg, arrays)


# -- rewards and status: anyone <-> generation worker ------------------------------------
#
# Same ROUTER socket as the images. An :class:`EpochMessage` sent to the worker is
# answered by a :class:`RewardReply`; a :class:`StatusRequest` by a :class:`StatusReply`.


class RatingMessage(Message):
    """The participant's self-report of one trial, forwarded from its ``rating`` marker.

    ``eegs acquire`` reads the presentation's markers and publishes one of these per
    rated trial beside the epochs, so the worker can pair each calibration epoch with
    the participant's own rating (the personal reward) in a live session and in a replay.
    """

    type: Literal["rating"] = "rating"
    session: str
    trial_id: TrialId
    block: str = ""
    valence: float | None = None
    arousal: float | None = None
    scale: tuple[float, float] = Field(description="The scale's lowest and highest point.")
    rt_ms: dict[str, float | None] = Field(default_factory=dict)


class RewardReply(Message):
    """The reward of one epoch, and the image it was credited to (None: not used)."""

    type: Literal["reward"] = "reward"
    trial_id: TrialId
    reward: float
    image_id: str | None = None
    used: bool = Field(description="Added to the generator's observations.")
    reason: str = ""
    details: dict[str, Any] = Field(default_factory=dict)
    compute_ms: float = 0.0


class StatusRequest(Message):
    """Ask the worker whether it is ready and what it holds."""

    type: Literal["status_request"] = "status_request"


class StatusReply(Message):
    """The worker's state."""

    type: Literal["status"] = "status"
    ready: bool
    busy: bool
    backend: dict[str, Any]
    round: int
    n_observations: int
    best_reward: float | None = None
    device: str = "cpu"
    gpu_memory_mb: float | None = Field(None, description="Allocated by torch on the GPU.")
    queue: dict[str, int] = Field(
        default_factory=dict, description="Work waiting: parked epochs, observations, requests."
    )


# -- ratings ------------------------------------------------------------------------------
#: The presentation's marker with a trial's answers (app/presentation/runner.py).
RATING_EVENT = "rating"
RATING_SCALES = ("valence", "arousal")


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer beyond float range
        return None
    return value if math.isfinite(value) else None


def rating_message(
    marker: dict[str, Any], session: str, default_scale: tuple[float, float]
) -> tuple[RatingMessage | None, list[str]]:
    """The :class:`RatingMessage` of a ``rating`` marker, and what was wrong with it.

    A value that is not a finite number on the scale (the marker's ``low``/``high``,
    else ``default_scale``) is left out; a marker without a valid trial id, or with no
    valid value left, gives no message.
    """
    problems: list[str] = []
    trial = trial_id_of(marker.get("trial"))
    if trial is None:
        return None, [f"trial id {str(marker.get('trial'))[:40]!r} is not an integer from 0 "
                      f"to {MAX_TRIAL_ID}"]  # fmt: skip
    low, high = _finite_number(marker.get("low")), _finite_number(marker.get("high"))
    if low is None or high is None or high <= low:
        if "low" in marker or "high" in marker:
            problems.append(f"scale {marker.get('low')!r}..{marker.get('high')!r} replaced")
        low, high = float(default_scale[0]), float(default_scale[1])
    values: dict[str, float | None] = {}
    for scale in RATING_SCALES:
        if marker.get(scale) is None:
            values[scale] = None
            continue
        value = _finite_number(marker[scale])
        if value is None or not low <= value <= high:
            problems.append(
                f"{scale} {marker[scale]!r} is not a finite number from {low:g} to {high:g}"
            )
        values[scale] = value if value is not None and low <= value <= high else None
    raw_rt = marker.get("rt_ms")
    rt_ms = {}
    if isinstance(raw_rt, dict):
        for scale, ms in raw_rt.items():
            if isinstance(scale, str) and (ms is None or _finite_number(ms) is not None):
                rt_ms[scale] = None if ms is None else float(ms)
    if all(v is None for v in values.values()):
        problems.append("no valid rating")
        return None, problems
    block = marker.get("block")
    try:
        msg = RatingMessage(
            session=session,
            trial_id=trial,
            block=block if isinstance(block, str) else "",
            valence=values["valence"],
            arousal=values["arousal"],
            scale=(low, high),
            rt_ms=rt_ms,
        )
    except ValueError as err:  # pydantic's ValidationError: whatever was missed above
        return None, [*problems, f"not a valid rating message: {err}"]
    return msg, problems
