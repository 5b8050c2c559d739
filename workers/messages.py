"""Typed, versioned messages that processes exchange over ZeroMQ.

A message is a multipart ZeroMQ message: frame 0 is a JSON header validated by one
of the models below (its ``type`` picks the model, its ``v`` must equal
:data:`SCHEMA_VERSION`); any further frames are raw arrays described in the header.
A message that does not validate raises :class:`MessageError`, which a service turns
into an :class:`ErrorReply` instead of crashing.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 256 << 20


class MessageError(ValueError):
    """A message that cannot be accepted: malformed, oversize or of another version."""


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
    """Shape and dtype of one array frame."""

    model_config = ConfigDict(extra="forbid")
    shape: tuple[int, ...]
    dtype: Literal["float32", "float64", "uint8", "int64"]


class EpochMessage(Message):
    """One preprocessed epoch, in µV, shape (n_channels, n_times)."""

    type: Literal["epoch"] = "epoch"
    session: str
    trial_id: int = Field(ge=0)
    marker: dict[str, Any]
    ch_names: list[str]
    sfreq: float = Field(gt=0)
    tmin: float
    quality: dict[str, Any]
    window_end_lsl: float
    sent_lsl: float
    arrays: list[ArraySpec]


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
    try:
        raw = json.loads(frames[0])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MessageError(f"header is not JSON: {err}") from None
    if not isinstance(raw, dict):
        raise MessageError("header must be a JSON object")
    if raw.get("v") != SCHEMA_VERSION:
        raise MessageError(f"schema version {raw.get('v')!r}; this build speaks {SCHEMA_VERSION}")
    model = Message.registry.get(raw.get("type"))
    if model is None:
        raise MessageError(f"unknown message type {raw.get('type')!r}")
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
        if int(np.prod(spec.shape)) * dtype.itemsize != len(frame):
            raise MessageError(f"array frame of {len(frame)} bytes does not match {spec}")
        arrays.append(np.frombuffer(frame, dtype=dtype).reshape(spec.shape))
    return msg, arrays


def array_spec(array: np.ndarray) -> ArraySpec:
    """Describe an array for a message header."""
    return ArraySpec(shape=array.shape, dtype=str(array.dtype))
