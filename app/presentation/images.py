"""Stimulus images: found in folders or received from the generator, decoded off the frame loop.

The frame loop never decodes: a loader thread reads each file, hashes it and decodes
it to RGBA pixels (PIL releases the GIL while it inflates), and hands a
:class:`StimulusImage` to the main thread through a bounded queue. Images received
over ZeroMQ are first written to the session directory (PNG and a JSON sidecar with
their provenance), so that every marker names a file that another process can read.
No PsychoPy here: this module is testable without a window.
"""

from __future__ import annotations

import hashlib
import io
import logging
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from PIL import Image, UnidentifiedImageError

from workers import transport
from workers.errors import InputError
from workers.messages import (
    ErrorReply,
    ImageBatch,
    ImageRequest,
    MessageError,
    decode,
    encode,
)
from workers.session_store import atomic_write_bytes, atomic_write_json

logger = logging.getLogger("eegs.presentation.images")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageSourceError(InputError):
    """An image folder that cannot be used (missing, empty), named with the reason."""


@dataclass(frozen=True)
class ImageRef:
    """One image to show: its file and optional class label."""

    path: Path
    label: str | None = None
    round: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class StimulusImage:
    """A decoded image, ready for texture upload (RGBA, top row first)."""

    ref: ImageRef
    sha256: str
    pixels: np.ndarray = field(repr=False)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.pixels.shape[1], self.pixels.shape[0]


@dataclass(frozen=True)
class ImageFailure:
    """An image that could not be loaded, and why."""

    ref: ImageRef
    reason: str


@dataclass(frozen=True)
class BatchFailure:
    """A round's images that did not come (error reply or unusable message)."""

    round: int
    reason: str


def list_images(folder: Path) -> list[ImageRef]:
    """Images of a folder, sorted; a file in a subfolder is labelled with its name.

    This is the ``imagefolder`` layout (``FOLDER/amusement/x.png`` -> label
    ``"amusement"``); files directly in ``folder`` have no label.
    """
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise ImageSourceError(f"image folder {folder} does not exist")
    refs = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        rel = path.relative_to(folder)
        label = rel.parts[0] if len(rel.parts) > 1 else None
        refs.append(ImageRef(path, label))
    if not refs:
        raise ImageSourceError(
            f"image folder {folder} holds no image ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return refs


class FolderPlan:
    """Draws images from a folder for successive rounds, without repeats while it can.

    Labels are balanced: images are drawn round-robin over the labels in random
    order, so a calibration block shows as many of each class as the folder allows.
    """

    def __init__(self, folder: Path, seed: int | str) -> None:
        self.refs = list_images(folder)
        self._rng = random.Random(seed)
        self._left: list[ImageRef] = []

    def _refill(self) -> None:
        by_label: dict[str | None, list[ImageRef]] = {}
        for ref in self.refs:
            by_label.setdefault(ref.label, []).append(ref)
        for refs in by_label.values():
            self._rng.shuffle(refs)
        labels = list(by_label)
        self._rng.shuffle(labels)
        order = []
        while any(by_label.values()):
            for label in labels:
                if by_label[label]:
                    order.append(by_label[label].pop())
        self._left = order[::-1]  # pop() from the end takes them in order

    def draw(self, n: int, round_: int = 0) -> list[ImageRef]:
        """Take the next ``n`` images (the folder is reshuffled when it runs out)."""
        out = []
        for _ in range(n):
            if not self._left:
                self._refill()
            ref = self._left.pop()
            out.append(ImageRef(ref.path, ref.label, round_))
        return out


def read_image(ref: ImageRef, max_size: int = 16384) -> StimulusImage:
    """Read, hash and decode one image file; raises ValueError with the reason."""
    try:
        data = ref.path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read {ref.path}: {err.strerror}") from None
    sha = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            if max(im.size) > max_size:  # read from the header: nothing decoded yet
                raise ValueError(f"{im.size[0]}x{im.size[1]} exceeds {max_size} pixels")
            im.load()
            rgba = im.convert("RGBA")
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"not a readable image: {err}") from None
    pixels = np.ascontiguousarray(np.asarray(rgba, dtype=np.uint8))
    return StimulusImage(ref, sha, pixels)


class ImageLoader:
    """A thread that decodes submitted images in order into a bounded queue."""

    def __init__(self, lookahead: int = 3, max_size: int = 16384) -> None:
        self.max_size = max_size
        self._jobs: queue.SimpleQueue[ImageRef | ImageFailure | BatchFailure | None] = (
            queue.SimpleQueue()
        )
        self.ready: queue.Queue[StimulusImage | ImageFailure | BatchFailure] = queue.Queue(
            lookahead
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="image-loader", daemon=True)
        self._thread.start()

    def submit(self, ref: ImageRef) -> None:
        """Queue an image for decoding (thread-safe)."""
        self._jobs.put(ref)

    def fail(self, failure: ImageFailure | BatchFailure) -> None:
        """Pass a failure through the same ordered queue (thread-safe)."""
        self._jobs.put(failure)

    def poll(self) -> StimulusImage | ImageFailure | BatchFailure | None:
        """Return the next decoded image or failure, without waiting."""
        try:
            return self.ready.get_nowait()
        except queue.Empty:
            return None

    def _put(self, item: StimulusImage | ImageFailure | BatchFailure) -> None:
        while not self._stop.is_set():
            try:
                self.ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        while not self._stop.is_set():
            job = self._jobs.get()
            if job is None:
                return
            if isinstance(job, ImageFailure | BatchFailure):
                self._put(job)
                continue
            try:
                item: StimulusImage | ImageFailure = read_image(job, self.max_size)
            except ValueError as err:
                item = ImageFailure(job, str(err))
            self._put(item)

    def clear(self) -> None:
        """Drop every queued and decoded image (a block or round ended early)."""
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        while self.poll() is not None:
            pass

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._jobs.put(None)
        self._thread.join(2.0)


class GeneratorClient:
    """Asks the generation worker for each round's images and stores what comes back.

    A DEALER socket (loopback, or CURVE for a remote GPU server) lives in its own
    thread. Each received image is written to ``SESSION/images/...`` with a JSON
    sidecar, then handed to the :class:`ImageLoader`; a failed round reaches the main
    thread as a :class:`BatchFailure`.

    A worker that crashed and was restarted by the supervisor never got the request it
    was working on: when the socket connects again, every round still awaited is asked
    for again (``image_request_resent``); a ``busy`` reply to such a repeat is ignored.
    """

    def __init__(
        self,
        endpoint: str,
        session_dir: Path,
        loader: ImageLoader,
        *,
        secret_key: str | None = None,
        server_public_key: str | None = None,
        on_event: Callable[..., None] = lambda event, **fields: None,
    ) -> None:
        self.endpoint = endpoint
        self.session_dir = Path(session_dir).resolve()
        self.loader = loader
        self.on_event = on_event
        ctx = zmq.Context.instance()
        self._sock = transport.connect(
            ctx,
            zmq.DEALER,
            endpoint,
            secret_key=secret_key,
            server_public_key=server_public_key,
        )
        self._requests: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self.converged: dict[int, str] = {}  # round -> the generator's stop reason
        self._pending: dict[int, tuple[ImageRequest, str]] = {}
        self._monitor = self._sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        self._was_connected = False
        self._repeats = 0  # requests sent again to a restarted worker, not yet answered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="generator-client", daemon=True)
        self._thread.start()

    def request(self, request: ImageRequest, folder: str) -> None:
        """Ask for a round; its images go to ``SESSION/images/FOLDER`` (thread-safe)."""
        self._requests.put((request, folder))

    def cancel(self, round_: int) -> None:
        """Forget a round asked for; a batch that comes later is logged and dropped."""
        self._requests.put(("cancel", round_))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    item = self._requests.get_nowait()
                except queue.Empty:
                    item = ()
                if item is None:
                    return
                if item and item[0] == "cancel":
                    self._pending.pop(item[1], None)
                elif item:
                    req, folder = item
                    self._pending[req.round] = (req, folder)
                    self._sock.send_multipart([b"", *encode(req)])
                    self.on_event("image_request", **req.model_dump(exclude={"type", "v"}))
                self._watch_connection()
                if self._sock.poll(20):
                    self._receive(self._sock.recv_multipart())
        finally:
            self._monitor.close(0)
            self._sock.close(0)

    def _watch_connection(self) -> None:
        """Ask again for every awaited round once a (restarted) worker is connected."""
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event != zmq.EVENT_HANDSHAKE_SUCCEEDED:
                continue
            if self._was_connected and self._pending:
                for req, _ in self._pending.values():
                    self._sock.send_multipart([b"", *encode(req)])
                self._repeats += len(self._pending)
                self.on_event("image_request_resent", rounds=sorted(self._pending))
            self._was_connected = True

    def _receive(self, frames: list[bytes]) -> None:
        if frames and frames[0] == b"":
            frames = frames[1:]
        try:
            msg, arrays = decode(frames)
        except MessageError as err:
            self._fail(None, f"unusable reply: {err}")
            return
        if isinstance(msg, ErrorReply) and msg.error == "busy" and self._repeats:
            self._repeats -= 1
            self.on_event("image_request_repeat_busy", detail=msg.detail)
            return  # a repeat of a request the worker is already answering
        if isinstance(msg, ErrorReply):
            self._fail(None, f"generator error: {msg.error} {msg.detail}".strip())
            return
        if not isinstance(msg, ImageBatch):
            self._fail(None, f"unexpected reply of type {msg.type!r}")
            return
        pending = self._pending.pop(msg.round, None)
        if pending is None:
            self.on_event("image_batch_unrequested", round=msg.round)
            return
        _, folder = pending
        out_dir = self.session_dir / "images" / folder
        for info, arr in zip(msg.images, arrays, strict=True):
            path = out_dir / f"{info.image_id}.png"
            try:
                png = arr.tobytes() if arr.ndim == 1 else _png_bytes(arr)
                atomic_write_bytes(path, png)
                atomic_write_json(
                    path.with_suffix(".json"),
                    {
                        "image_id": info.image_id,
                        "label": info.label,
                        "round": msg.round,
                        "sha256": hashlib.sha256(png).hexdigest(),
                        "provenance": info.provenance,
                    },
                )
            except (OSError, ValueError) as err:
                ref = ImageRef(path, info.label, msg.round, info.provenance)
                self.loader.fail(ImageFailure(ref, f"cannot store received image: {err}"))
                continue
            self.loader.submit(ImageRef(path, info.label, msg.round, info.provenance))
        self.on_event(
            "image_batch",
            round=msg.round,
            n_images=len(msg.images),
            deadline_missed=msg.deadline_missed,
            converged=msg.converged,
            stop_reason=msg.stop_reason,
            timing_ms=msg.timing_ms,
        )
        if msg.converged:
            self.converged[msg.round] = msg.stop_reason or "converged"

    def _fail(self, round_: int | None, reason: str) -> None:
        rounds = [round_] if round_ is not None else list(self._pending)
        for r in rounds:
            self._pending.pop(r, None)
            self.loader.fail(BatchFailure(r, reason))
        self.on_event("image_batch_failed", rounds=rounds, reason=reason)

    def close(self) -> None:
        """Stop the thread and close the socket."""
        self._stop.set()
        self._requests.put(None)
        self._thread.join(2.0)


def _png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def fit_size(image_wh: tuple[int, int], box: tuple[float, float]) -> tuple[float, float]:
    """Largest (width, height) inside ``box`` with the image's aspect ratio."""
    w, h = image_wh
    bw, bh = box
    aspect = w / h
    if aspect >= bw / bh:
        return bw, bw / aspect
    return bh * aspect, bh
