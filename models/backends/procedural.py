"""The procedural backend: parametric images on a CPU, with no model weights.

Images are rendered from 18 parameters in [0, 1] that span what carries affect in
natural images (Valdez & Mehrabian 1994; Lakens et al. 2013; Bar & Neta 2006): the
hue, saturation and value of a background and of a foreground shape, a texture
(grating or band-pass noise: spatial frequency, orientation, contrast), the shape's
size, number of lobes, spikiness (rounded vs sharp), position and edge softness, and
global brightness and contrast. A per-image seed sets the texture's phase and noise,
as the initial noise does for a diffusion model.

The embedding is a fixed vector of 63 low-level image features (colour moments, hue
and luminance histograms, radial spectrum, edge orientation energy, centre-surround
contrast, symmetry, a coarse luminance/saturation layout), z-scored with statistics of
random renders. ``generate`` goes back from an embedding to parameters with a ridge
regression fitted once on random renders: an approximate inverse, as IP-Adapter is for
CLIP embeddings. That inverse alone regresses to the mean and clips, so the generator's
render -> embed -> step loop drifts: 15 inner steps of it end in black-on-white,
high-contrast images whatever the reward. Anchors stop the drift: every image this
backend rendered and then embedded is remembered with its parameters, and an embedding
closer to one of them than the inverse's typical error is generated as that image's
parameters plus the linear map of the difference. An inner step then changes the image
by the step only, and an image's own embedding gives the image back.

Everything this backend produces is labelled ``procedural``.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from PIL import Image

from models.backends.base import Backend
from models.backends.features import image_features
from models.backends.pool import ImagePool

PARAM_NAMES = (
    "bg_hue", "bg_saturation", "bg_value",
    "fg_hue", "fg_saturation", "fg_value",
    "texture_frequency", "texture_orientation", "texture_contrast", "texture_noise",
    "shape_size", "shape_lobes", "shape_spikiness", "shape_x", "shape_y", "shape_softness",
    "brightness", "contrast",
)  # fmt: skip
N_PARAMS = len(PARAM_NAMES)
_HUES = (0, 3)  # circular parameters, regressed as (cos, sin)
_FEATURE_RES = 64
RENDERER_VERSION = "eegs-procedural-1"


def sample_parameters(n: int, rng: np.random.Generator) -> np.ndarray:
    """Parameters of ``n`` random images (the renderer's prior), shape (n, 18)."""
    return rng.random((n, N_PARAMS))


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB for arrays of any shape; returns shape + (3,)."""
    h6 = (h % 1.0) * 6.0
    c = v * s
    x = c * (1 - np.abs(h6 % 2 - 1))
    z = np.zeros_like(c)
    sector = np.floor(h6).astype(int) % 6
    r = np.choose(sector, [c, x, z, z, x, c])
    g = np.choose(sector, [x, c, c, x, z, z])
    b = np.choose(sector, [z, z, x, c, c, x])
    m = v - c
    return np.stack([r + m, g + m, b + m], axis=-1)


class ProceduralRenderer:
    """Renders batches of images from parameter vectors (numpy, vectorised)."""

    def __init__(self, size: int, noise_cache: int = 64) -> None:
        self.size = size
        lin = (np.arange(size) + 0.5) / size * 2 - 1
        self.u, self.v = np.meshgrid(lin, -lin)  # y up
        f = np.fft.fftfreq(size) * size  # cycles per image
        self.freq = np.hypot(*np.meshgrid(f, f))
        self._noise: OrderedDict[int, tuple[np.ndarray, float, float]] = OrderedDict()
        self._noise_cache = noise_cache

    def _seed_state(self, seed: int) -> tuple[np.ndarray, float, float]:
        """White-noise spectrum, grating phase and shape rotation of one seed (cached)."""
        hit = self._noise.get(seed)
        if hit is not None:
            self._noise.move_to_end(seed)
            return hit
        rng = np.random.default_rng(seed)
        spectrum = np.fft.fft2(rng.standard_normal((self.size, self.size)))
        state = (spectrum, float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi)))
        self._noise[seed] = state
        if len(self._noise) > self._noise_cache:
            self._noise.popitem(last=False)
        return state

    def render(self, params: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        """Images as float RGB in [0, 1], shape (n, size, size, 3)."""
        p = np.clip(np.asarray(params, dtype=np.float64), 0.0, 1.0)
        n = p.shape[0]
        states = [self._seed_state(int(s)) for s in seeds]
        col = lambda i: p[:, i][:, None, None]  # noqa: E731 - broadcast one parameter
        # texture: grating <-> band-pass noise at one spatial frequency
        f0 = 1.0 * 32.0 ** p[:, 6]  # 1 to 32 cycles per image
        theta = p[:, 7] * np.pi
        phase = np.array([s[1] for s in states])
        proj = (
            self.u[None] * np.cos(theta)[:, None, None]
            + self.v[None] * np.sin(theta)[:, None, None]
        )
        grating = np.cos(np.pi * f0[:, None, None] * proj + phase[:, None, None])
        band = np.exp(-0.5 * (np.log2((self.freq[None] + 1e-3) / f0[:, None, None]) / 0.5) ** 2)
        spectra = np.stack([s[0] for s in states])
        noise = np.fft.ifft2(spectra * band).real
        noise /= noise.std(axis=(1, 2), keepdims=True) + 1e-9
        mix = col(9)
        texture = (1 - mix) * grating + mix * np.clip(noise / 1.5, -1.5, 1.5)
        # shape: a lobed blob, rounded or spiky, soft or sharp edged
        cx, cy = (col(13) - 0.5) * 1.0, (col(14) - 0.5) * 1.0
        du, dv = self.u[None] - cx, self.v[None] - cy
        r, ang = np.hypot(du, dv), np.arctan2(dv, du)
        lobes = np.round(p[:, 11] * 8)[:, None, None]
        rot = np.array([s[2] for s in states])[:, None, None]
        wave = np.cos(lobes * ang + rot)
        sharp = np.sign(wave) * np.abs(wave) ** (1.0 / (1.0 + 4.0 * col(12)))
        radius = (0.15 + 0.6 * col(10)) * (1 + 0.55 * col(12) * sharp * (lobes > 0))
        soft = 0.005 + 0.15 * col(15)
        mask = 1.0 / (1.0 + np.exp(-(radius - r) / soft))
        # colours
        bg = _hsv_to_rgb(col(0), col(1), 0.1 + 0.9 * col(2))
        fg = _hsv_to_rgb(col(3), col(4), 0.1 + 0.9 * col(5))
        img = bg * (1 - mask[..., None]) + fg * mask[..., None]
        img = img * (1 + 0.6 * col(8)[..., None] * texture[..., None] * (1 - 0.5 * mask[..., None]))
        contrast = 0.5 + col(17)[..., None]
        brightness = 0.5 + col(16)[..., None]
        img = ((img - 0.5) * contrast + 0.5) * brightness
        return np.clip(img, 0.0, 1.0).reshape(n, self.size, self.size, 3)


def _param_targets(p: np.ndarray) -> np.ndarray:
    """Parameters with circular hues as (cos, sin), so a linear map can predict them."""
    cols = []
    for i in range(N_PARAMS):
        if i in _HUES:
            cols += [np.cos(2 * np.pi * p[:, i]), np.sin(2 * np.pi * p[:, i])]
        else:
            cols.append(p[:, i])
    return np.stack(cols, 1)


def _params_from_targets(t: np.ndarray) -> np.ndarray:
    out, j = [], 0
    for i in range(N_PARAMS):
        if i in _HUES:
            out.append((np.arctan2(t[:, j + 1], t[:, j]) / (2 * np.pi)) % 1.0)
            j += 2
        else:
            out.append(t[:, j])
            j += 1
    return np.clip(np.stack(out, 1), 0.0, 1.0)


class ProceduralBackend(Backend):
    """Parametric images + low-level features; the CPU default needing no weights.

    Parameters
    ----------
    size
        Image side in pixels.
    fit_samples, ridge_alpha
        Random renders and ridge penalty of the embedding -> parameter map.
    seed
        Seeds those random renders, so that the embedding space is reproducible.
    """

    name = "procedural"

    def __init__(
        self,
        size: int = 256,
        fit_samples: int = 2048,
        ridge_alpha: float = 1.0,
        seed: int = 0,
        *,
        anchors: int = 512,
    ) -> None:
        self.size = size
        self.renderer = ProceduralRenderer(size)
        self._fit_renderer = ProceduralRenderer(_FEATURE_RES)
        self.model_ids = {"renderer": RENDERER_VERSION, "features": "eegs-lowlevel-63"}
        rng = np.random.default_rng(seed)
        params = sample_parameters(fit_samples, rng)
        seeds = rng.integers(0, 2**31, fit_samples)
        raw = np.concatenate(
            [
                image_features(self._fit_renderer.render(params[i : i + 256], seeds[i : i + 256]))
                for i in range(0, fit_samples, 256)
            ]
        )
        self._loc = raw.mean(0)
        self._scale = raw.std(0) + 1e-6
        z = (raw - self._loc) / self._scale
        targets = _param_targets(params)
        design = np.concatenate([z, np.ones((fit_samples, 1))], 1)
        gram = design.T @ design + ridge_alpha * np.diag([1.0] * z.shape[1] + [0.0])
        self._W = np.linalg.solve(gram, design.T @ targets)
        self.embed_dim = z.shape[1]
        self._max_anchors = anchors
        self._anchors: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        # typical embedding error of the absolute inverse: a closer anchor is a better start
        n = min(64, fit_samples)
        back = self._fit_renderer.render(_params_from_targets(design[:n] @ self._W), seeds[:n])
        back = (image_features(back) - self._loc) / self._scale
        self.anchor_radius = float(np.median(np.linalg.norm(back - z[:n], axis=1)))

    # -- parameters <-> images <-> embeddings ------------------------------------------
    @classmethod
    def from_settings(cls, settings, *, random_weights: bool = False) -> ProceduralBackend:
        """``generation.procedural``'s renderer, seeded by ``generation.seed``."""
        p = settings.procedural
        return cls(p.size, p.fit_samples, p.ridge_alpha, seed=settings.seed)

    def stimulus_pool(self, settings) -> ImagePool | None:
        """Renders of its own (``procedural.pool_size``) unless ``pool.folder`` is set."""
        if settings.pool.folder:
            return None
        return procedural_pool(self, settings.procedural.pool_size, seed=settings.seed)

    def fork(self) -> ProceduralBackend:
        """A backend sharing the fitted map, with its own copy of the anchors learnt so far.

        The anchor table (``embed`` adds every render) is the only state a run changes:
        runs that each start from a fork of one backend start alike and do not depend on
        one another, without refitting the map.
        """
        twin = copy.copy(self)
        twin._anchors = OrderedDict(self._anchors)
        twin._lock = threading.Lock()
        return twin

    def render(self, params: np.ndarray, seeds: Sequence[int]) -> list[Image.Image]:
        """Images from parameter vectors (n, 18)."""
        rgb = self.renderer.render(params, seeds)
        return [Image.fromarray((a * 255 + 0.5).astype(np.uint8)) for a in rgb]

    def params_for(self, embeddings: np.ndarray) -> np.ndarray:
        """Parameters whose render should have these embeddings.

        The nearest anchor's, moved by the linear map of the difference, else the ridge
        inverse's.
        """
        e = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
        design = np.concatenate([e, np.ones((e.shape[0], 1))], 1)
        t = design @ self._W
        with self._lock:
            anchors = list(self._anchors.values())
        if anchors:
            F = np.stack([a[0] for a in anchors])
            d = np.linalg.norm(e[:, None] - F[None], axis=2)
            near = d.argmin(axis=1)
            for i, j in enumerate(near):
                if d[i, j] < self.anchor_radius:
                    t[i] = anchors[j][1] + (e[i] - F[j]) @ self._W[:-1]
        return _params_from_targets(t)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Z-scored low-level features of each image, float32 (n, 63).

        Images this backend rendered (``info["eegs_params"]``) become anchors.
        """
        arrs = []
        for im in images:
            im = im.convert("RGB")
            if im.size != (_FEATURE_RES, _FEATURE_RES):
                im = im.resize((_FEATURE_RES, _FEATURE_RES), Image.Resampling.BOX)
            arrs.append(np.asarray(im, dtype=np.float64) / 255.0)
        raw = image_features(np.stack(arrs))
        z = ((raw - self._loc) / self._scale).astype(np.float32)
        with self._lock:
            for im, e in zip(images, z, strict=True):
                params = im.info.get("eegs_params")
                if params is None or len(params) != N_PARAMS:
                    continue
                key = e.tobytes()
                self._anchors[key] = (e.astype(np.float64), _param_targets(np.asarray([params]))[0])
                self._anchors.move_to_end(key)
                if len(self._anchors) > self._max_anchors:
                    self._anchors.popitem(last=False)
        return z

    def generate(self, embeddings: np.ndarray, seeds: Sequence[int]) -> list[Image.Image]:
        """Render the parameters :meth:`params_for` finds for each embedding."""
        if len(seeds) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(seeds)} seeds")
        params = self.params_for(embeddings)
        images = self.render(params, seeds)
        for im, p in zip(images, params, strict=True):
            im.info["eegs_params"] = [round(float(v), 6) for v in p]
        return images


def procedural_pool(backend: ProceduralBackend, n: int, seed: int = 0) -> ImagePool:
    """A stimulus pool of ``n`` random renders (ids ``proc-NNNN``), kept in memory."""
    rng = np.random.default_rng([seed, 1])
    params = sample_parameters(n, rng)
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, n)]
    images: list[Image.Image] = []
    for i in range(0, n, 64):
        images += backend.render(params[i : i + 64], seeds[i : i + 64])
    for image, p in zip(images, params, strict=True):
        image.info["eegs_params"] = [round(float(v), 6) for v in p]
    embeddings = np.concatenate([backend.embed(images[i : i + 64]) for i in range(0, n, 64)])
    return ImagePool([f"proc-{i:04d}" for i in range(n)], embeddings, lambda i: images[i].copy())
