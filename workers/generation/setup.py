"""What a worker loads once before it serves: the backend, the stimulus pool, the reward.

Each is the registered class the protocol names (:func:`models.backends.base.backend_class`,
:func:`models.rewards.base.reward_class`, :func:`workers.generation.personal_fit.session_fitted`);
a backend's module is imported only when named, so that a procedural worker never loads
torch's model libraries.
"""

from __future__ import annotations

from pathlib import Path

from experiment_protocols import Protocol
from models.backends.base import Backend, backend_class
from models.backends.pool import ImagePool
from models.rewards.base import RewardFunction, from_settings
from workers.generation.personal_fit import session_fitted


def build_backend(protocol: Protocol, *, random_weights: bool = False) -> Backend:
    """The backend the protocol names (its registered class), loaded once."""
    g = protocol.generation
    return backend_class(g.backend).from_settings(g, random_weights=random_weights)


def build_pool(protocol: Protocol, backend: Backend) -> ImagePool:
    """The stimulus pool in the backend's embedding space.

    The backend's own pool where it has one (the procedural renders, the pool backend's
    folder), else ``generation.pool.folder`` embedded by the backend.
    """
    g = protocol.generation
    own = backend.stimulus_pool(g)
    if own is not None:
        return own
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
