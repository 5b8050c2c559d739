"""Low-level image features: the procedural backend's embedding and the pool's embedder.

A module of their own so that the pool (which embeds folders with them) and the
procedural backend (which builds an in-memory pool) import each other's parts at top
level without a circle.
"""

from __future__ import annotations

import numpy as np


def image_features(rgb: np.ndarray) -> np.ndarray:
    """Low-level features of float RGB images (n, h, w, 3) in [0, 1]; returns (n, 63)."""
    n, h, w, _ = rgb.shape
    mx, mn = rgb.max(-1), rgb.min(-1)
    val = mx
    sat = np.where(mx > 1e-6, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.arctan2(np.sqrt(3.0) * (g - b), 2 * r - g - b)  # circular, radians
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    flat = lambda a: a.reshape(n, -1)  # noqa: E731
    feats = [
        flat(rgb.reshape(n, -1, 3).mean(1)),
        flat(rgb.reshape(n, -1, 3).std(1)),
        np.stack([flat(sat).mean(1), flat(sat).std(1), flat(val).mean(1), flat(val).std(1)], 1),
        np.stack([flat(sat * np.cos(hue)).mean(1), flat(sat * np.sin(hue)).mean(1)], 1),
    ]
    hue_bin = (((hue + np.pi) / (2 * np.pi)) * 8).astype(int).clip(0, 7)
    feats.append(np.stack([flat(sat * (hue_bin == k)).mean(1) for k in range(8)], 1))
    lum_bin = (lum * 8).astype(int).clip(0, 7)
    feats.append(np.stack([flat(lum_bin == k).mean(1) for k in range(8)], 1))
    power = np.abs(np.fft.fft2(lum - lum.mean(axis=(1, 2), keepdims=True))) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")
    fr = np.hypot(fy, fx)
    edges = [0.5, 1.5, 3, 6, 12, 24, 64]
    feats.append(
        np.stack(
            [
                np.log10(flat(power * ((fr >= lo) & (fr < hi))).sum(1) + 1e-3)
                for lo, hi in zip(edges[:-1], edges[1:], strict=True)
            ],
            1,
        )
        / 4.0
    )
    gy, gx = np.diff(lum, axis=1)[:, :, :-1], np.diff(lum, axis=2)[:, :-1, :]
    mag = np.hypot(gx, gy)
    ori = (np.arctan2(gy, gx) % np.pi) / np.pi * 4
    ori_bin = ori.astype(int).clip(0, 3)
    total = flat(mag).sum(1) + 1e-6
    feats.append(
        np.concatenate(
            [
                np.stack([flat(mag * (ori_bin == k)).sum(1) / total for k in range(4)], 1),
                flat(mag).mean(1)[:, None] * 10,
            ],
            1,
        )
    )
    yy, xx = np.mgrid[0:h, 0:w]
    centre = ((yy - h / 2 + 0.5) ** 2 + (xx - w / 2 + 0.5) ** 2) < (0.3 * min(h, w)) ** 2
    feats.append(
        np.stack(
            [
                lum[:, centre].mean(1) - lum[:, ~centre].mean(1),
                sat[:, centre].mean(1) - sat[:, ~centre].mean(1),
            ],
            1,
        )
    )

    def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = flat(a) - flat(a).mean(1, keepdims=True), flat(b) - flat(b).mean(1, keepdims=True)
        return (a * b).sum(1) / (np.sqrt((a * a).sum(1) * (b * b).sum(1)) + 1e-9)

    feats.append(np.stack([_corr(lum, lum[:, :, ::-1]), _corr(lum, lum[:, ::-1, :])], 1))
    feats.append(flat(lum.reshape(n, 4, h // 4, 4, w // 4).mean((2, 4))))
    feats.append(flat(sat.reshape(n, 2, h // 2, 2, w // 2).mean((2, 4))))
    return np.concatenate(feats, 1)
