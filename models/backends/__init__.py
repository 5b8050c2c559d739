"""Image backends behind one interface (:class:`models.backends.base.Backend`).

``procedural`` renders parametric images on a CPU with no weights; ``sdxl`` runs
SDXL-Lightning with IP-Adapter; ``pool`` selects from a folder of images. Backends are
imported lazily so that importing this package never loads diffusers or weights.
"""

from models.backends.base import Backend, BackendUnavailableError

__all__ = ["Backend", "BackendUnavailableError"]
