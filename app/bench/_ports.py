"""A free loopback port for the benches' own sockets and children.

Its own module so that the benches (:mod:`app.bench.acquisition`,
:mod:`app.bench.presentation`) and the dashboard load they share
(:mod:`app.bench._dashboard`) import it at top level without a circle.
"""

from __future__ import annotations

import socket


class socket_free_port:
    """Context manager yielding a free loopback TCP port."""

    def __enter__(self) -> int:
        self._s = socket.socket()
        self._s.bind(("127.0.0.1", 0))
        return self._s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self._s.close()
