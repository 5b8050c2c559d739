"""CLIP training pairs simulated by the brain model: the stand-in for THINGS-EEG2.

ATM-S-FC keeps its ATM-S encoder frozen, so it is only as good as the data the encoder
was pretrained on; the poster's encoder saw THINGS-EEG2 (many subjects, many images).
No such weights can ship with EEGS, but the brain model can stand in for that data set:
procedural images shown once each to several simulated subjects, their epochs paired
with each image's embedding. Subjects used here should not be the subjects a decoder is
then tested on, as THINGS-EEG2's subjects are not the lab's participant.

The procedural backend's embedding (63 z-scored low-level features) is mapped into
ATM-S's 1024-d output space by a fixed orthonormal map (:func:`lift`), which keeps
every inner product, so the CLIP loss sees the same similarities.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from models.decoders.clip_training import PairedEEG

EMBED_DIM = 1024
_LIFT_SEED = 20240601
_TMIN, _TMAX = -0.2, 1.0  # epochs as `eegs acquire` cuts them; baseline -0.2-0 s


def lift(embeddings: np.ndarray, dim: int = EMBED_DIM) -> np.ndarray:
    """Embeddings (n, d <= dim) placed in ``dim`` dimensions by a fixed orthonormal map."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.shape[1] > dim:
        raise ValueError(f"embeddings have {e.shape[1]} dimensions, more than {dim}")
    q = np.linalg.qr(np.random.default_rng(_LIFT_SEED).standard_normal((dim, dim)))[0]
    return (e @ q[:, : e.shape[1]].T).astype(np.float32)


def procedural_images(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` random procedural images (128 x 128 RGB uint8), drawn from ``rng``."""
    from models.backends.procedural import ProceduralRenderer, sample_parameters

    params = sample_parameters(n, rng)
    rgb = ProceduralRenderer(128).render(params, rng.integers(0, 2**31, n))
    return list((rgb * 255 + 0.5).astype(np.uint8))


def decoder_epochs(
    model, images: Sequence[np.ndarray], seed: int, window_s: tuple[float, float] = (0.0, 1.0)
) -> np.ndarray:
    """Epochs of ``images`` shown to ``model`` as the decoders get them, float32 µV.

    One continuous simulated stream, epochs cut at -0.2-1.0 s like ``eegs acquire``,
    baseline-corrected on -0.2-0 s and cropped to ``window_s``; every channel of the model.
    """
    from models.decoders.classifiers import crop_window

    X = model.simulate_epochs(list(images), tmin=_TMIN, tmax=_TMAX, seed=seed)
    n_base = int(round(-_TMIN * model.sfreq))
    X = X - X[:, :, : n_base + 1].mean(axis=2, keepdims=True)
    return crop_window(X, model.sfreq, _TMIN, window_s).astype(np.float32)


def brain_model_pairs(
    subjects: Sequence[int],
    n_images: int,
    *,
    channels: Sequence[str] = (),
    window_s: tuple[float, float] = (0.0, 1.0),
    sfreq: float = 250.0,
    snr: float | None = None,
    seed: int = 0,
) -> tuple[PairedEEG, list[str]]:
    """(pairs, channel names): ``n_images`` new procedural images per subject, one trial each.

    Every subject sees different images (drawn from ``seed`` and the subject), in one
    continuous simulated stream per subject; epochs are baseline-corrected, cropped to
    ``window_s`` and reduced to ``channels`` (every channel of the 64-channel montage
    when empty), as the decoders get them.
    """
    from models.backends.procedural import ProceduralBackend
    from models.brain.response import DEFAULT_SNR, BrainModel
    from models.decoders.classifiers import pick_channels

    if not subjects or n_images < 1:
        raise ValueError("brain_model_pairs needs at least one subject and one image")
    features = ProceduralBackend(size=128)  # the live backend's embedding space
    eeg, embeddings, names = [], [], None
    for subject in subjects:
        images = procedural_images(n_images, np.random.default_rng([seed, subject, 7919]))
        model = BrainModel(subject, sfreq=sfreq, snr=DEFAULT_SNR if snr is None else snr)
        X = decoder_epochs(model, images, seed * 100_003 + subject, window_s)
        X, names = pick_channels(X, list(model.ch_names), list(channels))
        eeg.append(X)
        embeddings.append(features.embed([Image.fromarray(im) for im in images]))
    emb = lift(np.concatenate(embeddings))
    pairs = PairedEEG(np.concatenate(eeg), np.arange(len(emb)), emb)
    return pairs, list(names or [])
