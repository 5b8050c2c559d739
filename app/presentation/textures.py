"""Texture upload in strips, spread over blank frames, so no frame pays for a whole image.

PsychoPy's ``ImageStim.image = picture`` converts and uploads a 1024x1024 image in one
call (several ms of CPU, more on a slow driver). Here the decoded RGBA pixels are sent
with ``glTexSubImage2D`` a band of rows at a time, within a time budget per frame,
into a texture that ``ImageStim`` draws through its texture-provider interface (an
object with a ``colorTexture`` attribute, which PsychoPy also uses for movies).
Import only in the process that owns the window (it needs its GL context).
"""

from __future__ import annotations

import ctypes
import time
from collections import deque

import numpy as np
from pyglet import gl as GL

from app.presentation.images import StimulusImage

_MIN_ROWS = 16


class StreamedTexture:
    """One RGBA8 GL texture filled band by band; ``ImageStim`` draws it as an image."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.colorTexture = GL.GLuint()  # noqa: N815 - PsychoPy's provider interface
        GL.glGenTextures(1, ctypes.byref(self.colorTexture))
        GL.glBindTexture(GL.GL_TEXTURE_2D, self.colorTexture)
        for pname, value in (
            (GL.GL_TEXTURE_MIN_FILTER, GL.GL_LINEAR),
            (GL.GL_TEXTURE_MAG_FILTER, GL.GL_LINEAR),
            (GL.GL_TEXTURE_WRAP_S, GL.GL_CLAMP_TO_EDGE),
            (GL.GL_TEXTURE_WRAP_T, GL.GL_CLAMP_TO_EDGE),
        ):
            GL.glTexParameteri(GL.GL_TEXTURE_2D, pname, value)
        GL.glTexImage2D(
            GL.GL_TEXTURE_2D,
            0,
            GL.GL_RGBA8,
            width,
            height,
            0,
            GL.GL_RGBA,
            GL.GL_UNSIGNED_BYTE,
            None,
        )
        GL.glBindTexture(GL.GL_TEXTURE_2D, 0)
        self.image: StimulusImage | None = None
        self.rows_done = 0

    @property
    def complete(self) -> bool:
        """True once every row of the current image is on the GPU."""
        return self.image is not None and self.rows_done >= self.height

    def start(self, image: StimulusImage) -> None:
        """Begin uploading ``image`` (same size as the texture)."""
        self.image = image
        self.rows_done = 0

    def upload(self, rows: int) -> int:
        """Send the next ``rows`` rows; returns how many were sent."""
        if self.image is None or self.rows_done >= self.height:
            return 0
        r0 = self.rows_done
        r1 = min(self.height, r0 + rows)
        band = self.image.pixels[r0:r1]
        GL.glBindTexture(GL.GL_TEXTURE_2D, self.colorTexture)
        GL.glPixelStorei(GL.GL_UNPACK_ALIGNMENT, 1)
        GL.glTexSubImage2D(
            GL.GL_TEXTURE_2D,
            0,
            0,
            r0,
            self.width,
            r1 - r0,
            GL.GL_RGBA,
            GL.GL_UNSIGNED_BYTE,
            band.ctypes.data_as(ctypes.c_void_p),
        )
        GL.glBindTexture(GL.GL_TEXTURE_2D, 0)
        self.rows_done = r1
        return r1 - r0

    def release(self) -> None:
        """Forget the image (the texture is kept for reuse)."""
        self.image = None
        self.rows_done = 0

    def delete(self) -> None:
        """Free the GL texture."""
        GL.glDeleteTextures(1, ctypes.byref(self.colorTexture))


def max_texture_size() -> int:
    """The driver's largest texture side, in pixels."""
    value = GL.GLint()
    GL.glGetIntegerv(GL.GL_MAX_TEXTURE_SIZE, ctypes.byref(value))
    return int(value.value)


class TextureStager:
    """Moves decoded images onto the GPU during blank frames, at most ``budget_ms`` each.

    Textures are recycled by size, so a session of same-sized images allocates a
    handful once. ``ready`` holds images whose every row is uploaded, in order.
    """

    def __init__(self, budget_ms: float, max_ready: int = 2) -> None:
        self.budget_s = budget_ms / 1e3
        self.max_ready = max_ready
        self.ready: deque[StreamedTexture] = deque()
        self.current: StreamedTexture | None = None
        self._free: list[StreamedTexture] = []
        self._rows_per_ms = 256.0  # first guess, learnt from each band
        self.uploaded_rows = 0

    @property
    def busy(self) -> bool:
        """True while an image is part-way up."""
        return self.current is not None

    @property
    def wants_image(self) -> bool:
        """True when the stager can start on another image."""
        return self.current is None and len(self.ready) < self.max_ready

    def start(self, image: StimulusImage) -> None:
        """Take a decoded image; uploading happens in :meth:`step`."""
        w, h = image.size
        tex = next((t for t in self._free if (t.width, t.height) == (w, h)), None)
        if tex is not None:
            self._free.remove(tex)
        else:
            tex = StreamedTexture(w, h)
        tex.start(image)
        self.current = tex

    def step(self) -> None:
        """Upload bands until the budget of this frame is spent."""
        tex = self.current
        if tex is None:
            return
        t0 = time.perf_counter()
        deadline = t0 + self.budget_s
        while not tex.complete:
            now = time.perf_counter()
            left_ms = (deadline - now) * 1e3
            rows = int(self._rows_per_ms * left_ms)
            if rows < _MIN_ROWS:
                if now > t0:  # something was sent this frame already
                    break
                rows = _MIN_ROWS
            t_band = time.perf_counter()
            sent = tex.upload(rows)
            took_ms = (time.perf_counter() - t_band) * 1e3
            self.uploaded_rows += sent
            if took_ms > 0.05:
                self._rows_per_ms = 0.7 * self._rows_per_ms + 0.3 * (sent / took_ms)
        if tex.complete:
            self.ready.append(tex)
            self.current = None

    def recycle(self, tex: StreamedTexture) -> None:
        """Give a shown texture back; it is reused for an image of its size."""
        tex.release()
        self._free.append(tex)
        while len(self._free) > 4:
            self._free.pop(0).delete()

    def clear(self) -> None:
        """Drop every staged image (a round ended early)."""
        if self.current is not None:
            self.recycle(self.current)
            self.current = None
        while self.ready:
            item = self.ready.popleft()
            if isinstance(item, StreamedTexture):  # not a pool stand-in
                self.recycle(item)


def preload(image: StimulusImage) -> StreamedTexture:
    """Upload a whole image at once (before the session starts: pool images)."""
    tex = StreamedTexture(*image.size)
    tex.start(image)
    tex.upload(tex.height)
    return tex


def blank_pixels(width: int = 4, height: int = 4) -> np.ndarray:
    """A small grey RGBA image (used to warm up the image shader)."""
    return np.full((height, width, 4), 128, np.uint8)
