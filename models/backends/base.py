"""The interface every image backend offers to the heuristic generator.

A backend maps between images and an embedding space: ``embed`` turns images into
vectors, ``generate`` turns vectors (plus a noise seed per image) back into images.
The generator only ever moves vectors in that space, so the same algorithm drives
SDXL + IP-Adapter on a GPU, the procedural renderer on a laptop, and selection from a
fixed image folder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
from PIL import Image


class BackendUnavailableError(RuntimeError):
    """A backend that cannot be built here (missing weights, no GPU...); says how to fix."""


class Backend(ABC):
    """Embedding space <-> images.

    Attributes
    ----------
    name
        Backend name written into every image's provenance.
    embed_dim
        Length of an embedding vector.
    model_ids
        What produced the images (model ids, renderer version), for provenance.
    can_generate
        False for selection-only backends (``pool``).
    """

    name: str = "base"
    embed_dim: int = 0
    model_ids: dict[str, str]
    can_generate: bool = True

    @abstractmethod
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images; returns float32 (n, embed_dim)."""

    @abstractmethod
    def generate(self, embeddings: np.ndarray, seeds: Sequence[int]) -> list[Image.Image]:
        """Render one image per embedding row with its noise seed, in one batched call.

        An entry is None where the backend could not make a valid image (the SDXL
        backend's NaN or black output after one retry); a retry that used another seed
        says so in the image's ``info["eegs_seed"]``.
        """

    def fork(self) -> Backend:
        """A backend for an independent run (the optimiser benches).

        A backend whose state a run changes returns a copy; a stateless one, itself.
        """
        return self

    def warmup(self, batch: int = 1) -> None:  # noqa: B027 - optional hook
        """Run the models once, at the batch size of a round, so round 1 is not slow."""
        if self.can_generate:
            z = np.zeros((max(1, batch), self.embed_dim), np.float32)
            images = [im for im in self.generate(z, list(range(max(1, batch)))) if im is not None]
            if images:
                self.embed(images)

    def describe(self) -> dict[str, object]:
        """Name, dimension and model ids, for logs and provenance."""
        return {
            "backend": self.name,
            "embed_dim": self.embed_dim,
            "model_ids": dict(self.model_ids),
        }
