"""The interface every image backend offers to the heuristic generator.

A backend maps between images and an embedding space: ``embed`` turns images into
vectors, ``generate`` turns vectors (plus a noise seed per image) back into images.
The generator only ever moves vectors in that space, so the same algorithm drives
SDXL + IP-Adapter on a GPU, the procedural renderer on a laptop, and selection from a
fixed image folder.

A backend is one module, ``models/backends/NAME.py``, holding one :class:`Backend`
subclass with ``name = "NAME"``: defining the subclass registers it, and
:func:`backend_class` imports that module the first time the protocol's
``generation.backend`` names it, so a backend's heavy libraries load only when it runs
(the protocol's side of the name is ``register_backend`` in
``experiment_protocols/generation.py``; docs/architecture.md section 13).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from models.backends.pool import ImagePool


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
    registry: ClassVar[dict[str, type[Backend]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:  # a variant of a registered backend (tests)
            return
        known = Backend.registry.get(cls.name)
        if known is not None and _origin(known) != _origin(cls):
            raise ValueError(
                f"backend {cls.name!r} is registered twice: {_origin(known)} and {_origin(cls)}"
            )
        Backend.registry[cls.name] = cls

    @classmethod
    def from_settings(cls, settings: Any, *, random_weights: bool = False) -> Backend:
        """The backend the protocol's ``generation`` section describes, loaded once.

        ``random_weights``: full-size models with random weights, for timing without
        the weight files (a backend without weights ignores it).
        """
        raise NotImplementedError

    def stimulus_pool(self, settings: Any) -> ImagePool | None:
        """The backend's own stimulus pool for ``generation`` settings, if it has one.

        None (the default): the images of ``generation.pool.folder``, embedded by this
        backend (:func:`workers.generation.setup.build_pool`).
        """
        return None

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


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def backend_class(name: str) -> type[Backend]:
    """The registered backend ``name`` (``models/backends/NAME.py`` imported when needed).

    Raises
    ------
    BackendUnavailableError
        If no module registers it.
    """
    if name not in Backend.registry and name.isidentifier():
        module = f"{__package__}.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    try:
        return Backend.registry[name]
    except KeyError:
        raise BackendUnavailableError(
            f"no backend registers {name!r} (models/backends/{name}.py); registered: "
            f"{', '.join(sorted(Backend.registry))}"
        ) from None
