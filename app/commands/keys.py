"""Make CURVE key pairs for a worker on another machine, in the layout the protocol reads.

``eegs keys --dir keys SERVER CLIENT`` writes ``keys/SERVER.key`` (public) and
``keys/SERVER.key_secret`` for each name, and for each name a folder
``keys/authorized-on-NAME/`` holding the public keys of the others, the folder that
name's ``network.curve_authorized_dir`` points at. It prints the protocol lines of each
side. Copy a ``.key_secret`` file only to the machine it names; public ``.key`` files
may be shared. Existing keys are never overwritten.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from workers.errors import InputError

NAME = "keys"
HELP = "make CURVE key pairs (worker on another machine) in the protocol's layout"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument("names", nargs="+", metavar="NAME", help="one key pair per machine")
    p.add_argument("--dir", type=Path, default=Path("keys"), help="where (default: keys/)")


def run(args: argparse.Namespace) -> int:
    """Write the pairs and the authorised folders; print the protocol lines."""
    import zmq.auth

    names = list(dict.fromkeys(args.names))
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise InputError(f"key names must be letters, digits, '.', '_' or '-': {bad}")
    if len(names) < 2:
        raise InputError("name at least two machines (a server and its client)")
    folder = args.dir
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--dir {folder}: not a folder (a file of that name exists)")
    clash = [folder / f"authorized-on-{n}" for n in names]
    clash = [p for p in clash if p.exists() and not p.is_dir()]
    if clash:
        raise InputError(f"refusing to replace files with folders: {[str(p) for p in clash]}")
    existing = [folder / f"{n}.key_secret" for n in names if (folder / f"{n}.key_secret").exists()]
    if existing:
        raise InputError(f"refusing to overwrite existing keys: {[str(p) for p in existing]}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file where a parent folder should be, no permission
        raise InputError(f"--dir {folder}: cannot make it: {err.strerror}") from None
    for n in names:
        zmq.auth.create_certificates(str(folder), n)
    for n in names:
        allowed = folder / f"authorized-on-{n}"
        allowed.mkdir(exist_ok=True)
        for other in names:
            if other != n:
                shutil.copy2(folder / f"{other}.key", allowed / f"{other}.key")
    server, clients = names[0], names[1:]
    print(f"On {server} (the worker; it binds its endpoint):")
    print(f'  network.curve_secret_key = "{folder / f"{server}.key_secret"}"')
    print(f'  network.curve_authorized_dir = "{folder / f"authorized-on-{server}"}"')
    for c in clients:
        print(f"On {c} (connects to {server}):")
        print(f'  network.curve_secret_key = "{folder / f"{c}.key_secret"}"')
        print(f'  network.curve_public_key = "{folder / f"{server}.key"}"')
        print(f'  network.curve_authorized_dir = "{folder / f"authorized-on-{c}"}"')
    return 0
