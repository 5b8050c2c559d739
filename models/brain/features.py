"""Interpretable low-level features of an image, the only thing the brain model sees.

The simulated participant's responses (visual ERPs and hidden affect) are functions of
these numbers alone, so every effect in the simulated EEG can be traced back to a
property of the pixels that a person can name. Features are computed on a small
thumbnail (:data:`THUMBNAIL`), which makes them cheap (about 1 ms) and independent of the
image's resolution.

Features (all computed on sRGB values in [0, 1]):

``brightness``      mean luminance (Rec. 709 weights).
``contrast``        RMS contrast: standard deviation of luminance.
``saturation``      mean HSV saturation.
``colourfulness``   Hasler & Süsstrunk (2003) colourfulness of the opponent channels.
``red_green``       mean red-minus-green opponent value (> 0: reddish).
``yellow_blue``     mean yellow-minus-blue opponent value (> 0: yellowish/warm).
``edge_density``    fraction of pixels whose luminance gradient exceeds
                    :data:`EDGE_THRESHOLD` (clutter, texture, visual complexity).
``high_freq``       share of luminance spectral energy above a quarter of the
                    thumbnail's Nyquist frequency (fine texture).
``symmetry``        correlation of the luminance with its left-right mirror image.
``curvature``       normalised entropy of the edge-orientation histogram: curved
                    contours spread over all orientations, straight and angular ones
                    concentrate in a few (a proxy, after Bar & Neta 2006).
``lower_upper``     (lower - upper) / (lower + upper) half-image contrast energy.
``left_right``      (left - right) / (left + right) half-image contrast energy.

"Warmth" is the direction of the (``red_green``, ``yellow_blue``) chroma vector:
warm images (red, orange, yellow) have both positive.
"""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
from PIL import Image

FEATURES: tuple[str, ...] = (
    "brightness",
    "contrast",
    "saturation",
    "colourfulness",
    "red_green",
    "yellow_blue",
    "edge_density",
    "high_freq",
    "symmetry",
    "curvature",
    "lower_upper",
    "left_right",
)

#: Side of the square thumbnail the features are computed on (pixels).
THUMBNAIL = 96
#: Luminance gradient (per pixel of the thumbnail, Sobel / 8) that counts as an edge.
EDGE_THRESHOLD = 0.04
_ORIENTATION_BINS = 12

#: Centre and spread of each feature over a varied image set (rough values for
#: photographs and procedural renderings); used to standardise features to z-scores.
FEATURE_NORMS: dict[str, tuple[float, float]] = {
    "brightness": (0.47, 0.15),
    "contrast": (0.18, 0.07),
    "saturation": (0.50, 0.20),
    "colourfulness": (0.30, 0.12),
    "red_green": (0.0, 0.20),
    "yellow_blue": (0.02, 0.20),
    "edge_density": (0.25, 0.22),
    "high_freq": (0.12, 0.12),
    "symmetry": (0.30, 0.45),
    "curvature": (0.80, 0.20),
    "lower_upper": (0.0, 0.25),
    "left_right": (0.0, 0.22),
}


class ImageError(ValueError):
    """An image that cannot be read; the message names it and says why."""


ImageLike = Image.Image | str | Path | np.ndarray


def load_image(image: ImageLike) -> Image.Image:
    """Return ``image`` as an RGB PIL image (a path, a PIL image or an HxWx3 uint8 array).

    Raises
    ------
    ImageError
        If the file is missing or not a readable image, or the array has the wrong shape.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ImageError(
                f"image array must be HxWx3 uint8, got shape {image.shape} dtype {image.dtype}"
            )
        return Image.fromarray(image, "RGB")
    if isinstance(image, str | Path):
        path = Path(image)
        shown = str(path).encode("utf-8", "backslashreplace").decode()  # loggable as is
        try:
            mode = path.stat().st_mode
        except (OSError, ValueError) as err:  # ValueError: a NUL in the name
            raise ImageError(f"{shown}: cannot read: {getattr(err, 'strerror', err)}") from None
        if not stat.S_ISREG(mode):  # /dev/zero or a FIFO would stall the caller's thread
            raise ImageError(f"{shown}: not a regular file")
        try:
            with Image.open(path) as img:
                img.draft("RGB", (THUMBNAIL * 2, THUMBNAIL * 2))  # fast JPEG downscale
                return img.convert("RGB")
        except OSError as err:
            if isinstance(err, FileNotFoundError | PermissionError | IsADirectoryError):
                raise ImageError(f"{shown}: cannot read: {err.strerror}") from None
            raise ImageError(f"{shown}: not a readable image: {err}") from None
        except Exception as err:  # PIL raises many types (even SyntaxError) for bad files
            raise ImageError(f"{shown}: not a readable image: {err}") from None
    raise ImageError(f"expected a path, PIL image or HxWx3 uint8 array, got {type(image).__name__}")


def thumbnail(image: ImageLike, size: int = THUMBNAIL) -> np.ndarray:
    """The image as a ``size`` x ``size`` x 3 float array in [0, 1] (aspect not kept)."""
    img = load_image(image).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(img, dtype=np.float32) / 255.0


def image_features(image: ImageLike) -> np.ndarray:
    """The :data:`FEATURES` of one image, as a float64 vector in that order."""
    return features_of_array(thumbnail(image))


def features_of_array(rgb: np.ndarray) -> np.ndarray:
    """:data:`FEATURES` of an HxWx3 float image in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    sat = np.where(mx > 1e-6, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())

    # Sobel gradients of the luminance (interior pixels only).
    p = lum
    gx = (
        p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:] - p[:-2, :-2] - 2 * p[1:-1, :-2] - p[2:, :-2]
    ) / 8
    gy = (
        p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:] - p[:-2, :-2] - 2 * p[:-2, 1:-1] - p[:-2, 2:]
    ) / 8
    mag = np.hypot(gx, gy)
    edges = mag > EDGE_THRESHOLD
    edge_density = float(edges.mean())

    if edges.sum() >= 8:
        theta = np.mod(np.arctan2(gy[edges], gx[edges]), np.pi)
        hist, _ = np.histogram(theta, bins=_ORIENTATION_BINS, range=(0, np.pi), weights=mag[edges])
        q = hist / hist.sum()
        q = q[q > 0]
        curvature = float(-(q * np.log(q)).sum() / np.log(_ORIENTATION_BINS))
    else:
        curvature = 1.0  # no contours: nothing angular

    spec = np.abs(np.fft.rfft2(lum - lum.mean())) ** 2
    fy = np.fft.fftfreq(lum.shape[0])[:, None]
    fx = np.fft.rfftfreq(lum.shape[1])[None, :]
    radius = np.hypot(fy, fx)
    total = spec.sum()
    high_freq = float(spec[radius > 0.125].sum() / total) if total > 1e-12 else 0.0

    mirror = lum[:, ::-1]
    sd = lum.std()
    symmetry = (
        float(((lum - lum.mean()) * (mirror - lum.mean())).mean() / sd**2) if sd > 1e-6 else 1.0
    )

    h, w = mag.shape
    upper, lower = mag[: h // 2].sum(), mag[h - h // 2 :].sum()
    left, right = mag[:, : w // 2].sum(), mag[:, w - w // 2 :].sum()
    lower_upper = float((lower - upper) / (lower + upper)) if lower + upper > 1e-9 else 0.0
    left_right = float((left - right) / (left + right)) if left + right > 1e-9 else 0.0

    return np.array(
        [
            lum.mean(),
            lum.std(),
            sat.mean(),
            colourfulness,
            rg.mean(),
            yb.mean(),
            edge_density,
            high_freq,
            symmetry,
            curvature,
            lower_upper,
            left_right,
        ],
        dtype=np.float64,
    )


def standardise(features: np.ndarray) -> np.ndarray:
    """Features as z-scores against :data:`FEATURE_NORMS` (clipped to +-4)."""
    centre = np.array([FEATURE_NORMS[f][0] for f in FEATURES])
    scale = np.array([FEATURE_NORMS[f][1] for f in FEATURES])
    return np.clip((np.asarray(features, dtype=np.float64) - centre) / scale, -4.0, 4.0)
