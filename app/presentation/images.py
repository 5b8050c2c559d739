"""Stimulus images: found in folders or received from the generator, decoded off the frame loop.

The frame loop never decodes: a loader thread reads each file, hashes it and decodes
it to RGBA pixels (PIL releases the GIL while it inflates), and hands a
:class:`StimulusImage` to the main thread through a bounded queue. An image received
over ZeroMQ is made ready from memory while the client's thread writes it to the
session directory (PNG and a JSON sidecar with its provenance); it reaches the frame
loop once both are done, so that every marker names a file that another process can
read. Each image is stamped with the moment it became usable (``t_ready``; the trial
record's ``image_ready_lsl``). A round asked for ahead of its block is
held, ready, until the block begins (:meth:`GeneratorClient.release`). No PsychoPy
here: this module is testable without a window.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pylsl
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
    """A decoded image, ready for texture upload (RGBA, top row first).

    ``t_ready``: when it became usable by the frame loop (decoded, its file stored), on
    the LSL clock; None for an image not made by the loader.
    """

    ref: ImageRef
    sha256: str
    pixels: np.ndarray = field(repr=False)
    t_ready: float | None = None

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
    return StimulusImage(ref, hashlib.sha256(data).hexdigest(), _decode(data, max_size))


def _decode(data: bytes, max_size: int) -> np.ndarray:
    """RGBA pixels of an encoded image; raises ValueError with the reason."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if max(im.size) > max_size:  # read from the header: nothing decoded yet
                raise ValueError(f"{im.size[0]}x{im.size[1]} exceeds {max_size} pixels")
            im.load()
            rgba = im.convert("RGBA")
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"not a readable image: {err}") from None
    return np.ascontiguousarray(np.asarray(rgba, dtype=np.uint8))


def _rgba(frame: np.ndarray, max_size: int) -> np.ndarray:
    """RGBA pixels of a received frame: PNG bytes (1-D) or raw (H, W, 3|4) pixels."""
    if frame.ndim == 1:
        return _decode(frame.tobytes(), max_size)
    if max(frame.shape[:2]) > max_size:
        raise ValueError(f"{frame.shape[1]}x{frame.shape[0]} exceeds {max_size} pixels")
    if frame.shape[2] == 4:
        return np.ascontiguousarray(frame, dtype=np.uint8)
    out = np.empty((*frame.shape[:2], 4), np.uint8)
    out[..., :3] = frame
    out[..., 3] = 255
    return out


class Received:
    """A generated image as the worker sent it: made ready from memory while it is stored.

    The loader makes its pixels from the frame in memory while the client's thread
    writes the file; :meth:`result` hands the image over only once the file is written,
    since its onset marker names the file and its hash.
    """

    def __init__(self, ref: ImageRef, frame: np.ndarray) -> None:
        self.ref = ref
        self.frame = frame
        self._stored = threading.Event()
        self._sha256: str | None = None
        self._store_error: str | None = None
        self._pixels: np.ndarray | None = None
        self._error: str | None = None
        self._t_pixels = self._t_stored = 0.0

    def stored(self, sha256: str | None, error: str | None = None) -> None:
        """The file is written (its hash), or could not be (why); from the storing thread."""
        self._sha256, self._store_error = sha256, error
        self._t_stored = pylsl.local_clock()
        self._stored.set()

    def prepare(self, max_size: int) -> None:
        """Make the pixels (once); a frame that is not an image is remembered as such."""
        if self._pixels is not None or self._error is not None:
            return
        try:
            self._pixels = _rgba(self.frame, max_size)
        except ValueError as err:
            self._error = str(err)
        self._t_pixels = pylsl.local_clock()

    def result(self, max_size: int, stop: threading.Event) -> StimulusImage | ImageFailure | None:
        """The image once its pixels are made and its file stored (None: stopped first)."""
        self.prepare(max_size)
        while not self._stored.wait(0.1):
            if stop.is_set():
                return None
        error = self._error or (
            f"cannot store received image: {self._store_error}" if self._store_error else None
        )
        if error is not None or self._sha256 is None or self._pixels is None:
            return ImageFailure(self.ref, error or "not stored")
        t_ready = max(self._t_pixels, self._t_stored)  # usable from then on
        return StimulusImage(self.ref, self._sha256, self._pixels, t_ready)


#: What the loader takes: an image file, a received image, or a failure to pass on.
LoaderJob = ImageRef | Received | ImageFailure | BatchFailure


class ImageLoader:
    """A thread that decodes submitted images in order into a bounded queue."""

    def __init__(self, lookahead: int = 3, max_size: int = 16384) -> None:
        self.max_size = max_size
        self._jobs: queue.SimpleQueue[LoaderJob | None] = queue.SimpleQueue()
        self.ready: queue.Queue[StimulusImage | ImageFailure | BatchFailure] = queue.Queue(
            lookahead
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="image-loader", daemon=True)
        self._thread.start()

    def submit(self, job: ImageRef | Received) -> None:
        """Queue an image for decoding (thread-safe)."""
        self._jobs.put(job)

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
            if isinstance(job, Received):
                item = job.result(self.max_size, self._stop)
                if item is None:
                    return
                self._put(item)
                continue
            try:
                item = read_image(job, self.max_size)
                item.t_ready = pylsl.local_clock()
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


def presentation_order(n: int, presentations: int, seed: int | tuple[int, ...]) -> list[int]:
    """Indices of a round's ``n`` images in showing order, each ``presentations`` times.

    One image shown once keeps the worker's order. Repeats come in shuffled passes, so
    that an image's presentations spread over the round (its reward averages over the
    participant's drift) and never follow each other across a pass's boundary.
    """
    if presentations == 1:
        return list(range(n))
    rng = np.random.default_rng(seed)
    order: list[int] = []
    for _ in range(presentations):
        p = rng.permutation(n).tolist()
        if order and n > 1 and p[0] == order[-1]:
            j = int(rng.integers(1, n))
            p[0], p[j] = p[j], p[0]
        order += p
    return order


@dataclass
class _Asked:
    """A round asked of the worker: where its images go, and whether they wait for their block.

    ``presentations``: times each image is shown (:func:`presentation_order`, seeded by
    ``order_seed``).
    """

    request: ImageRequest
    folder: str
    hold: bool = False
    presentations: int = 1
    order_seed: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[str, int]:
        return self.request.block, self.request.round


class GeneratorClient:
    """Asks the generation worker for each round's images and stores what comes back.

    A DEALER socket (loopback, or CURVE for a remote GPU server) lives in its own
    thread. A batch is logged as it arrives (``image_batch``, with ``t_received_lsl``);
    each of its images goes to the :class:`ImageLoader` at once, which makes it ready
    from memory while this thread writes it to ``SESSION/images/...`` with a JSON
    sidecar (``image_batch_stored``: how long that took). A failed round reaches the
    main thread as a :class:`BatchFailure`.

    A round asked for ahead of its block (``hold``: a block's round 0, asked while the
    block before it runs) is stored and made ready here as it comes and held until
    :meth:`release` says its block has begun; had it failed, it is asked for again then.

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
        self._commands: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self.converged: dict[tuple[str, int], str] = {}  # (block, round) -> stop reason
        self._pending: dict[tuple[str, int], _Asked] = {}  # in the order asked
        self._held: dict[tuple[str, int], list[Received]] = {}  # came ahead of their block
        self._failed_ahead: dict[tuple[str, int], _Asked] = {}
        self._monitor = self._sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        self._was_connected = False
        self._repeats = 0  # requests sent again to a restarted worker, not yet answered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="generator-client", daemon=True)
        self._thread.start()

    def request(
        self,
        request: ImageRequest,
        folder: str,
        *,
        hold: bool = False,
        presentations: int = 1,
        order_seed: tuple[int, ...] = (),
    ) -> None:
        """Ask for a round; its images go to ``SESSION/images/FOLDER`` (thread-safe).

        ``hold``: asked ahead of its block; its images wait for :meth:`release`.
        ``presentations``: each image goes to the loader that many times
        (:func:`presentation_order` with ``order_seed``).
        """
        self._commands.put(("ask", _Asked(request, folder, hold, presentations, order_seed)))

    def release(self, block: str, round_: int) -> None:
        """A round asked for ahead: its block has begun, its images go to the loader now."""
        self._commands.put(("release", (block, round_)))

    def cancel(self, block: str, round_: int) -> None:
        """Forget a round asked for; a batch that comes later is logged and dropped."""
        self._commands.put(("cancel", (block, round_)))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                while True:
                    try:
                        command = self._commands.get_nowait()
                    except queue.Empty:
                        break
                    if command is None:
                        return
                    self._command(*command)
                self._watch_connection()
                if self._sock.poll(20):
                    self._receive(self._sock.recv_multipart())
        finally:
            self._monitor.close(0)
            self._sock.close(0)

    def _command(self, kind: str, arg: Any) -> None:
        if kind == "ask":
            self._ask(arg)
        elif kind == "cancel":
            self._pending.pop(arg, None)
        elif kind == "release":
            held = self._held.pop(arg, None)
            if held is not None:
                for job in held:
                    self.loader.submit(job)
            elif arg in self._pending:  # not come yet: to the loader as it comes
                self._pending[arg].hold = False
            elif arg in self._failed_ahead:  # asked ahead in vain: again, now it is needed
                asked = self._failed_ahead.pop(arg)
                self._ask(dataclasses.replace(asked, hold=False))

    def _ask(self, asked: _Asked) -> None:
        req = asked.request
        self._pending[asked.key] = asked
        self._sock.send_multipart([b"", *encode(req)])
        self.on_event("image_request", **req.model_dump(exclude={"type", "v"}), ahead=asked.hold)

    def _watch_connection(self) -> None:
        """Ask again for every awaited round once a (restarted) worker is connected."""
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event != zmq.EVENT_HANDSHAKE_SUCCEEDED:
                continue
            if self._was_connected and self._pending:
                for asked in self._pending.values():
                    self._sock.send_multipart([b"", *encode(asked.request)])
                self._repeats += len(self._pending)
                self.on_event("image_request_resent", rounds=sorted(k[1] for k in self._pending))
            self._was_connected = True

    def _receive(self, frames: list[bytes]) -> None:
        t_received = pylsl.local_clock()
        if frames and frames[0] == b"":
            frames = frames[1:]
        try:
            msg, arrays = decode(frames)
        except MessageError as err:
            self._fail(f"unusable reply: {err}")
            return
        if isinstance(msg, ErrorReply) and msg.error == "busy" and self._repeats:
            self._repeats -= 1
            self.on_event("image_request_repeat_busy", detail=msg.detail)
            return  # a repeat of a request the worker is already answering
        if isinstance(msg, ErrorReply):
            self._fail(f"generator error: {msg.error} {msg.detail}".strip())
            return
        if not isinstance(msg, ImageBatch):
            self._fail(f"unexpected reply of type {msg.type!r}")
            return
        # the worker answers one request at a time: the oldest asked for this round
        key = next((k for k in self._pending if k[1] == msg.round), None)
        if key is None:
            self.on_event("image_batch_unrequested", round=msg.round)
            return
        asked = self._pending.pop(key)
        self.on_event(
            "image_batch",
            block=key[0],
            round=msg.round,
            n_images=len(msg.images),
            deadline_missed=msg.deadline_missed,
            converged=msg.converged,
            stop_reason=msg.stop_reason,
            timing_ms=msg.timing_ms,
            held=asked.hold,
            t_received_lsl=t_received,
        )
        if msg.converged:
            self.converged[key] = msg.stop_reason or "converged"
        out_dir = self.session_dir / "images" / asked.folder
        jobs = [
            Received(
                ImageRef(out_dir / f"{info.image_id}.png", info.label, msg.round, info.provenance),
                arr,
            )
            for info, arr in zip(msg.images, arrays, strict=True)
        ]
        shown = [
            jobs[i] for i in presentation_order(len(jobs), asked.presentations, asked.order_seed)
        ]
        if asked.hold:
            self._held[key] = shown
        else:
            for job in shown:  # made ready by the loader while they are stored
                self.loader.submit(job)
        t0 = time.perf_counter()
        failed = sum(
            not _store(job, info.image_id) for job, info in zip(jobs, msg.images, strict=True)
        )
        if asked.hold:
            for job in jobs:  # ready before its block needs it
                job.prepare(self.loader.max_size)
        self.on_event(
            "image_batch_stored",
            block=key[0],
            round=msg.round,
            store_ms=round((time.perf_counter() - t0) * 1e3, 3),
            failed=failed,
        )

    def _fail(self, reason: str) -> None:
        """Every awaited round failed; one asked ahead is asked again when its block begins."""
        rounds = []
        for key, asked in list(self._pending.items()):
            del self._pending[key]
            rounds.append(key[1])
            if asked.hold:
                self._failed_ahead[key] = asked
            else:
                self.loader.fail(BatchFailure(key[1], reason))
        self.on_event("image_batch_failed", rounds=rounds, reason=reason)

    def close(self) -> None:
        """Stop the thread and close the socket."""
        self._stop.set()
        self._commands.put(None)
        self._thread.join(2.0)


def _store(job: Received, image_id: str) -> bool:
    """Write a received image (PNG) and its sidecar; tell ``job`` how it went."""
    ref = job.ref
    try:
        png = job.frame.tobytes() if job.frame.ndim == 1 else _png_bytes(job.frame)
        sha = hashlib.sha256(png).hexdigest()
        atomic_write_bytes(ref.path, png)
        atomic_write_json(
            ref.path.with_suffix(".json"),
            {
                "image_id": image_id,
                "label": ref.label,
                "round": ref.round,
                "sha256": sha,
                "provenance": ref.meta,
            },
        )
    except (OSError, ValueError) as err:
        job.stored(None, str(err))
        return False
    job.stored(sha)
    return True


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
