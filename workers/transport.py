"""ZeroMQ sockets with the project's network policy.

Services bind to loopback (or IPC) by default. Any other interface is refused unless
CURVE keys are configured, so EEG never crosses a network unencrypted.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlparse

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from workers.errors import InputError


class InsecureEndpointError(InputError):
    """A non-loopback endpoint requested without CURVE keys."""


def is_local_endpoint(endpoint: str) -> bool:
    """True for ``ipc://``, ``inproc://`` and TCP on a loopback address."""
    scheme = endpoint.split("://", 1)[0]
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = urlparse(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(
    ctx: zmq.Context,
    socket_type: int,
    endpoint: str,
    *,
    secret_key: str | None = None,
    authorized_dir: str | None = None,
) -> tuple[zmq.Socket, ThreadAuthenticator | None]:
    """Bind a server socket; non-local endpoints need a CURVE key pair and client keys."""
    sock = ctx.socket(socket_type)
    sock.setsockopt(zmq.LINGER, 0)
    auth = None
    if not is_local_endpoint(endpoint):
        if not (secret_key and authorized_dir):
            sock.close()
            raise InsecureEndpointError(
                f"refusing to bind {endpoint} without CURVE: set network.curve_secret_key "
                "and network.curve_authorized_dir (generate keys with `eegs keys`), or "
                "bind to 127.0.0.1"
            )
        authorized = Path(authorized_dir)
        keys = sorted(authorized.glob("*.key")) if authorized.is_dir() else []
        if not keys:
            sock.close()
            raise InsecureEndpointError(
                f"network.curve_authorized_dir {authorized} "
                + ("holds no public key (*.key)" if authorized.is_dir() else "does not exist")
                + ": no client could connect; put the clients' public keys there "
                "(`eegs keys` writes them)"
            )
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(Path(authorized_dir)))
        public, secret = zmq.auth.load_certificate(secret_key)
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
    sock.bind(endpoint)
    return sock, auth


def connect(
    ctx: zmq.Context,
    socket_type: int,
    endpoint: str,
    *,
    secret_key: str | None = None,
    server_public_key: str | None = None,
) -> zmq.Socket:
    """Connect a client socket; non-local endpoints need CURVE keys."""
    sock = ctx.socket(socket_type)
    sock.setsockopt(zmq.LINGER, 0)
    if not is_local_endpoint(endpoint):
        if not (secret_key and server_public_key):
            sock.close()
            raise InsecureEndpointError(
                f"refusing to connect to {endpoint} without CURVE keys "
                "(network.curve_secret_key and network.curve_public_key)"
            )
        public, secret = zmq.auth.load_certificate(secret_key)
        server_public, _ = zmq.auth.load_certificate(server_public_key)
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_serverkey = server_public
    sock.connect(endpoint)
    return sock
