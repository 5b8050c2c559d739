"""The stimulus pool: images to start from and to explore with, and the ``pool`` backend.

An :class:`ImagePool` is a set of images with one embedding each, from a folder (the
lab's licensed affective image set) or built in memory (the procedural backend renders
its own). Folder embeddings are cached in a safetensors file inside the folder, keyed by
each file's relative path, size and modification time and by the embedder's id, so a
second start embeds only what changed.

The ``pool`` backend selects only: it cannot generate, and the heuristic generator
replaces each child by the nearest unseen pool image to the child's embedding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from safetensors.numpy import load_file, save_file

from models.backends.base import Backend, BackendUnavailableError
from models.backends.features import image_features

Embedder = Callable[[Sequence[Image.Image]], np.ndarray]


class ImagePool:
    """Images with embeddings; selection of nearest and random unseen ones.

    Parameters
    ----------
    ids
        One unique id per image (a folder pool uses the path relative to the folder).
    embeddings
        (n, dim) float32.
    loader
        ``loader(i)`` returns image ``i`` as a PIL image.
    paths
        File of each image, when the pool is a folder.
    """

    def __init__(
        self,
        ids: Sequence[str],
        embeddings: np.ndarray,
        loader: Callable[[int], Image.Image],
        paths: Sequence[Path] | None = None,
    ) -> None:
        if len(ids) != len(embeddings):
            raise ValueError(f"{len(ids)} ids but {len(embeddings)} embeddings")
        self.ids = list(ids)
        self.embeddings = np.asarray(embeddings, dtype=np.float32)
        self._loader = loader
        self.paths = list(paths) if paths is not None else None
        self._index = {k: i for i, k in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, image_id: str) -> int | None:
        """Position of an id, or None."""
        return self._index.get(image_id)

    def image(self, i: int) -> Image.Image:
        """Image ``i``."""
        return self._loader(i)

    def _unseen(self, seen: set[str]) -> np.ndarray:
        return np.array([i for i, k in enumerate(self.ids) if k not in seen], dtype=int)

    def nearest_unseen(self, queries: np.ndarray, seen: set[str], k: int) -> list[int]:
        """Up to ``k`` distinct unseen images, each the nearest to the next query in turn."""
        free = self._unseen(seen)
        out: list[int] = []
        queries = np.atleast_2d(queries)
        if k <= 0 or free.size == 0 or queries.shape[0] == 0:
            return out
        d = np.linalg.norm(self.embeddings[free][None] - queries[:, None], axis=2)  # (q, f)
        taken = np.zeros(free.size, bool)
        for j in range(k):
            row = d[j % queries.shape[0]].copy()
            row[taken] = np.inf
            best = int(np.argmin(row))
            if not np.isfinite(row[best]):
                break
            taken[best] = True
            out.append(int(free[best]))
        return out

    def random_unseen(self, rng: np.random.Generator, seen: set[str], k: int) -> list[int]:
        """Up to ``k`` random unseen images."""
        free = self._unseen(seen)
        if k <= 0 or free.size == 0:
            return []
        return [int(i) for i in rng.choice(free, size=min(k, free.size), replace=False)]

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        embedder: Embedder,
        embedder_id: str,
        *,
        cache_file: str = ".eegs-embeddings.safetensors",
        extensions: Sequence[str] = (".png", ".jpg", ".jpeg", ".webp"),
        batch_size: int = 16,
    ) -> ImagePool:
        """Every image under ``folder``, embedded (with a cache) by ``embedder``."""
        folder = Path(folder)
        if not folder.is_dir():
            raise BackendUnavailableError(f"image pool folder {folder} does not exist")
        exts = {e.lower() for e in extensions}
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)
        if not files:
            raise BackendUnavailableError(f"no images ({', '.join(sorted(exts))}) under {folder}")
        ids = [p.relative_to(folder).as_posix() for p in files]
        stamps = [f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
        cache = folder / cache_file
        cached = _read_cache(cache, embedder_id)
        emb: list[np.ndarray | None] = [
            cached.get(i, (None, None))[1] if cached.get(i, (None, None))[0] == s else None
            for i, s in zip(ids, stamps, strict=True)
        ]
        todo = [j for j, e in enumerate(emb) if e is None]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            images = [_open_rgb(files[j]) for j in chunk]
            for j, e in zip(chunk, embedder(images), strict=True):
                emb[j] = np.asarray(e, dtype=np.float32)
        matrix = np.stack(emb).astype(np.float32)
        if todo:
            _write_cache(cache, embedder_id, ids, stamps, matrix)
        return cls(ids, matrix, lambda i: _open_rgb(files[i]), paths=files)


def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise BackendUnavailableError(f"cannot read pool image {path}: {err}") from None


def _read_cache(path: Path, embedder_id: str) -> dict[str, tuple[str, np.ndarray]]:
    if not path.exists():
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
        if meta.get("embedder") != embedder_id:
            return {}
        ids, stamps = json.loads(meta["ids"]), json.loads(meta["stamps"])
        matrix = load_file(str(path))["embeddings"]
    except (OSError, KeyError, ValueError, json.JSONDecodeError):
        return {}  # unreadable cache: embed again
    return {i: (s, matrix[j]) for j, (i, s) in enumerate(zip(ids, stamps, strict=True))}


def _write_cache(path: Path, embedder_id: str, ids, stamps, matrix: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    meta = {"embedder": embedder_id, "ids": json.dumps(ids), "stamps": json.dumps(stamps)}
    try:
        save_file({"embeddings": matrix}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only folder: work without a cache


class LowLevelEmbedder:
    """The procedural backend's 63 low-level features, z-scored on a reference set."""

    def __init__(self, resolution: int = 64) -> None:
        self.resolution = resolution
        self.loc: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.id = f"eegs-lowlevel-63@{resolution}"

    def raw(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Unscaled features."""
        r = self.resolution
        arrs = [
            np.asarray(im.convert("RGB").resize((r, r), Image.Resampling.BOX), np.float64) / 255
            for im in images
        ]
        return image_features(np.stack(arrs))

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Scaled features (raw until a reference set has set ``loc`` and ``scale``)."""
        raw = self.raw(images)
        if self.loc is None:
            return raw.astype(np.float32)
        return ((raw - self.loc) / self.scale).astype(np.float32)


class PoolBackend(Backend):
    """Selection only, from a folder of images embedded by low-level features."""

    name = "pool"
    can_generate = False

    def __init__(self, folder: str | Path, cache_file: str, extensions: Sequence[str]) -> None:
        self.embedder = LowLevelEmbedder()
        self.pool = ImagePool.from_folder(
            folder,
            self.embedder.raw,
            self.embedder.id,
            cache_file=cache_file,
            extensions=extensions,
        )
        raw = self.pool.embeddings.astype(np.float64)
        self.embedder.loc, self.embedder.scale = raw.mean(0), raw.std(0) + 1e-6
        self.pool.embeddings = ((raw - self.embedder.loc) / self.embedder.scale).astype(np.float32)
        self.embed_dim = self.pool.embeddings.shape[1]
        self.model_ids = {"features": self.embedder.id, "pool": str(Path(folder).resolve())}

    @classmethod
    def from_settings(cls, settings, *, random_weights: bool = False) -> PoolBackend:
        """The folder of ``generation.pool``."""
        p = settings.pool
        return cls(p.folder, p.cache_file, p.extensions)

    def stimulus_pool(self, settings) -> ImagePool:
        """Its own folder: it selects from nothing else."""
        return self.pool

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Low-level features, z-scored on the pool."""
        return self.embedder(images)

    def generate(self, embeddings: np.ndarray, seeds: Sequence[int]) -> list[Image.Image]:
        """Not available: the pool backend only selects."""
        raise BackendUnavailableError("the pool backend selects images; it cannot generate")

    def warmup(self, batch: int = 1) -> None:
        """Nothing to warm up."""
