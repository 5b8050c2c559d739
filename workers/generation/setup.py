"""What a worker loads once before it serves: the backend, the stimulus pool, the reward.

Backends are imported only when named, so that a procedural worker never loads torch's
model libraries.
"""

from __future__ import annotations

from pathlib import Path

from experiment_protocols import Protocol
from models.backends.base import Backend
from models.backends.pool import ImagePool
from models.rewards.base import RewardFunction, from_settings
from workers.generation.personal_fit import session_fitted


def build_backend(protocol: Protocol, *, random_weights: bool = False) -> Backend:
    """The backend the protocol names, loaded once."""
    g = protocol.generation
    if g.backend == "procedural":
        from models.backends.procedural import ProceduralBackend

        p = g.procedural
        return ProceduralBackend(p.size, p.fit_samples, p.ridge_alpha, seed=g.seed)
    if g.backend == "pool":
        from models.backends.pool import PoolBackend

        return PoolBackend(g.pool.folder, g.pool.cache_file, g.pool.extensions)
    if not random_weights:
        from models.backends.sdxl_weights import check_weights

        check_weights(g.sdxl)  # before torch's model libraries load: one clear error
    from models.backends.sdxl import SDXLBackend

    if random_weights:
        return SDXLBackend.random_full_size(g.sdxl, g.device, g.dtype, g.compile, seed=g.seed)
    return SDXLBackend.from_pretrained(g.sdxl, g.device, g.dtype, g.compile)


def build_pool(protocol: Protocol, backend: Backend) -> ImagePool:
    """The stimulus pool in the backend's embedding space."""
    g = protocol.generation
    if g.backend == "procedural" and not g.pool.folder:
        from models.backends.procedural import procedural_pool

        return procedural_pool(backend, g.procedural.pool_size, seed=g.seed)
    if g.backend == "pool":
        return backend.pool
    return ImagePool.from_folder(
        g.pool.folder,
        backend.embed,
        f"{backend.name}:{sorted(backend.model_ids.items())}",
        cache_file=g.pool.cache_file,
        extensions=g.pool.extensions,
    )


def build_reward(protocol: Protocol, session_dir: Path) -> RewardFunction:
    """The protocol's reward: a fixed one, or one fitted on the session's calibration block."""
    settings = protocol.generation.reward
    if settings.fitted_on_session:
        return session_fitted(settings).for_protocol(protocol, session_dir)
    return from_settings(settings)
