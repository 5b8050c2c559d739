"""The experimenter's dashboard: a live page of a running session, or a finished session's timeline.

Live (``--session DIR``, started by ``eegs pilot``/``eegs run``): the EEG trace and
per-channel quality, the marker stream, the loop (block, round, trial, rewards, the
round's images with kind and parents, the calibration estimator's CV score, the GP), the
worker's status, timing histograms and alerts, with pause/resume/abort buttons. Given a
finished SESSION, the same page without live streams or controls. Served on
127.0.0.1 with a token in the URL (a second token for an observer without controls);
another --host is reachable from the network, still only with a token.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from app.dashboard import OBSERVER_TOKEN_ENV, TOKEN_ENV, url

NAME = "dashboard"
HELP = "a live page of a session in the browser (or a finished session's timeline)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    p.add_argument(
        "finished", nargs="?", type=Path, metavar="SESSION", help="a finished session (read-only)"
    )
    p.add_argument("--session", type=Path, metavar="DIR", help="the running session's directory")
    p.add_argument("--protocol", type=Path, metavar="FILE", help="default: SESSION/protocol.toml")
    p.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default loopback only)"
    )
    p.add_argument(
        "--control", metavar="ENDPOINT", help="the presentation's control socket (eegs present)"
    )
    p.add_argument("--channels", metavar="A,B,...", help="channels to trace (default: first 8)")


def run(args: argparse.Namespace) -> int:
    """Serve the page until SIGTERM/Ctrl-C."""
    import socket

    from threadpoolctl import threadpool_limits

    from app.dashboard.quality import Thresholds
    from app.dashboard.server import Tokens, allowed_roots, build_app, serve
    from app.dashboard.sources import EEGSource, MarkerSource, WorkerStatus
    from app.dashboard.view import View
    from experiment_protocols import load_protocol
    from experiment_protocols.schema import Priority
    from workers.errors import InputError
    from workers.priority import set_niceness

    session = args.session or args.finished
    if session is None:
        raise InputError("give a finished SESSION or --session DIR of a running one")
    live = args.session is not None
    if not live and not (session / "events.jsonl").is_file():  # a live one may not have begun
        raise InputError(f"{session}: not a session directory (no events.jsonl)")
    ppath = args.protocol or session / "protocol.toml"
    protocol = load_protocol(ppath) if ppath.exists() else None
    # an optional helper: it never competes with the presentation or the acquisition for a
    # core; set before its source threads start (they inherit it)
    set_niceness((protocol.priority if protocol else Priority()).dashboard, "dashboard")
    # its numpy work is small: BLAS's own worker threads (started at import, before the
    # niceness) would only spin at the default priority, about a tenth of a core
    threadpool_limits(1)
    if live and protocol is None:
        raise InputError(f"{ppath}: no protocol (give --protocol FILE)")
    tokens = Tokens(
        **{
            k: v
            for k, v in (
                ("controller", os.environ.get(TOKEN_ENV)),
                ("observer", os.environ.get(OBSERVER_TOKEN_ENV)),
            )
            if v
        }
    )
    eeg = markers = worker = None
    thresholds = Thresholds()
    if protocol is not None:
        notch = protocol.preprocessing.notch_hz
        thresholds = Thresholds(
            flat_uv=protocol.quality.flat_uv,
            reject_uv=protocol.quality.reject_uv,
            line_hz=notch[0] if notch else 50.0,
        )
    if live:
        eeg = EEGSource(protocol.streams.eeg)
        markers = MarkerSource(protocol.streams.markers)
        net = protocol.network
        worker = WorkerStatus(
            protocol.generation.endpoint,
            secret_key=net.curve_secret_key,
            server_public_key=net.curve_public_key,
        )
    view = View(
        session,
        eeg=eeg,
        markers=markers,
        worker=worker,
        thresholds=thresholds,
        channels=args.channels.split(",") if args.channels else None,
        live=live,
    )
    app = build_app(
        view,
        tokens,
        control=args.control if live else None,
        roots=allowed_roots(session, protocol),
    )
    port = args.port
    if not port:
        with socket.socket() as s:
            s.bind((args.host, 0))
            port = s.getsockname()[1]
    print(f"dashboard: {url(args.host, port, tokens.controller)}", file=sys.stderr, flush=True)
    print(f"observer:  {url(args.host, port, tokens.observer)}", file=sys.stderr, flush=True)
    serve(app, args.host, port)
    return 0
