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
from zmq.utils import z85

from experiment_protocols.bounded import InputRejected, read_limited
from workers.errors import InputError

#: A CURVE certificate is a few lines of text; anything larger is not one.
MAX_KEY_FILE_BYTES = 4096


class InsecureEndpointError(InputError):
    """A non-loopback endpoint requested without CURVE keys."""


class KeyFileError(InsecureEndpointError):
    """A CURVE key file that cannot be used: missing, not a file, or the wrong half."""


def load_key(path: str | Path, *, secret: bool, setting: str) -> tuple[bytes, bytes | None]:
    """(public, secret) of a CURVE certificate, checked; raises :class:`KeyFileError`.

    ``secret``: the file must hold the secret half too (this process's own key), not
    only the public one (a peer's). ``setting`` names the protocol key, for the message.
    """
    want = "a secret key file (NAME.key_secret)" if secret else "a public key file (NAME.key)"
    try:
        read_limited(path, max_bytes=MAX_KEY_FILE_BYTES, what="key file")
        public, secret_key = zmq.auth.load_certificate(path)
    except (InputRejected, OSError, ValueError) as err:
        reason = err.reason if isinstance(err, InputRejected) else str(err)
        raise KeyFileError(f"{setting} = {str(path)!r}: {reason}; expected {want} "
                           "(`eegs keys` writes them)") from None  # fmt: skip
    if secret and secret_key is None:
        raise KeyFileError(
            f"{setting} = {str(path)!r} holds only a public key; name this machine's "
            "NAME.key_secret file (`eegs keys` writes it)"
        )
    for half in (public, secret_key):
        if half is not None and len(_z85_or_empty(half)) != 32:
            raise KeyFileError(f"{setting} = {str(path)!r}: not a CURVE key (40 Z85 characters)")
    return public, secret_key


def _z85_or_empty(text: bytes) -> bytes:
    try:
        return z85.decode(text) if len(text) == 40 else b""
    except (ValueError, KeyError, TypeError):
        return b""


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
    """Bind a server socket; non-local endpoints need a CURVE key pair and client keys.

    Every key file is checked (:func:`load_key`) before a socket or an authenticator
    exists, so a bad one is a reason (exit status 2), never a traceback.
    """
    curve = None
    if not is_local_endpoint(endpoint):
        if not (secret_key and authorized_dir):
            raise InsecureEndpointError(
                f"refusing to bind {endpoint} without CURVE: set network.curve_secret_key "
                "and network.curve_authorized_dir (generate keys with `eegs keys`), or "
                "bind to 127.0.0.1"
            )
        authorized = Path(authorized_dir)
        keys = sorted(authorized.glob("*.key")) if authorized.is_dir() else []
        if not keys:
            raise InsecureEndpointError(
                f"network.curve_authorized_dir {authorized} "
                + ("holds no public key (*.key)" if authorized.is_dir() else "does not exist")
                + ": no client could connect; put the clients' public keys there "
                "(`eegs keys` writes them)"
            )
        for key in keys:  # the authenticator reads each; a bad one would stop it
            load_key(key, secret=False, setting="network.curve_authorized_dir")
        curve = load_key(secret_key, secret=True, setting="network.curve_secret_key")
    sock = ctx.socket(socket_type)
    sock.setsockopt(zmq.LINGER, 0)
    auth = None
    if curve is not None:
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(Path(authorized_dir)))
        sock.curve_publickey, sock.curve_secretkey = curve
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
    """Connect a client socket; non-local endpoints need CURVE keys (checked first)."""
    keys = None
    if not is_local_endpoint(endpoint):
        if not (secret_key and server_public_key):
            raise InsecureEndpointError(
                f"refusing to connect to {endpoint} without CURVE keys "
                "(network.curve_secret_key and network.curve_public_key)"
            )
        own = load_key(secret_key, secret=True, setting="network.curve_secret_key")
        server, _ = load_key(server_public_key, secret=False, setting="network.curve_public_key")
        keys = (*own, server)
    sock = ctx.socket(socket_type)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = keys
    sock.connect(endpoint)
    return sock
