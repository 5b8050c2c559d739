"""The dashboard's web server: one page, one websocket, thumbnails and three controls.

Starlette (a small, well-kept ASGI toolkit with native websockets) served by uvicorn,
so no HTTP is written by hand. Every route needs a token in the URL: the controller's
token sees the controls, the observer's token the same page without them; anything else
gets 403. A tick task folds what the sources brought into the :class:`~app.dashboard.view.View`
20 times a second and hands the change to every page. A page acknowledges each message;
while it has one unacknowledged, what comes next is merged into one message for it
(:func:`~app.dashboard.view.merge_deltas`) instead of queued, so a page that cannot keep
up (a busy CPU) gets fewer, fresher messages, never a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.dashboard.view import QUALITY_EVERY_S, View, merge_deltas
from experiment_protocols.bounded import InputRejected, parse_json
from workers.session_store import json_safe

logger = logging.getLogger("eegs.dashboard")

STATIC = Path(__file__).parent / "static"
TICK_S = 0.05
#: Messages a page may have unacknowledged; what comes meanwhile is merged, not queued.
IN_FLIGHT = 1
#: A page that acknowledges nothing for this long is dropped (it reconnects, snapshot).
ACK_TIMEOUT_S = 30.0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
#: A control request is ``{"command": "pause"}``; anything larger is not one.
MAX_CONTROL_BYTES = 1024


def plotly_js() -> Path:
    """plotly.min.js as bundled in the installed plotly package (never a CDN)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


@dataclass
class Tokens:
    """The controller's and the observer's tokens (random unless given)."""

    controller: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    observer: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    def role(self, token: str | None) -> str | None:
        """``controller``, ``observer`` or None for a missing or wrong token."""
        if not token:
            return None
        if secrets.compare_digest(token.encode(), self.controller.encode()):
            return "controller"
        if secrets.compare_digest(token.encode(), self.observer.encode()):
            return "observer"
        return None


class Controller:
    """Sends pause/resume/abort to the presentation's control socket (a PUSH that never blocks).

    Given no endpoint but a live ``session``, it finds the socket in ``events.jsonl``
    (the newest ``presentation_ready``'s ``control``): a dashboard started by hand
    beside a running session gets the controls too, and follows a resumed presentation.
    """

    def __init__(self, endpoint: str | None, session: Path | None = None) -> None:
        self.endpoint = None
        self.sock = None
        self._tail = None
        if endpoint:
            self._connect(endpoint)
        elif session is not None:
            from workers.session_store import EVENTS_FILE, EventTail

            self._tail = EventTail(Path(session) / EVENTS_FILE)

    def _connect(self, endpoint: str) -> None:
        from workers import transport

        if self.sock is not None:
            self.sock.close(0)
        self.endpoint = endpoint
        self.sock = transport.connect(zmq.Context.instance(), zmq.PUSH, endpoint)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)  # no presentation: refuse, do not queue

    def discover(self) -> None:
        """Connect to the newest presentation's control socket that the session logged."""
        if self._tail is None:
            return
        found = None
        for e in self._tail.new():
            if e.get("event") == "presentation_ready" and isinstance(e.get("control"), str):
                found = e["control"]
        if found and found != self.endpoint:
            self._connect(found)

    def send(self, command: str) -> bool:
        """True when the command left for a connected presentation."""
        self.discover()
        if self.sock is None or not self.sock.poll(250, zmq.POLLOUT):  # a connection in progress
            return False
        try:
            self.sock.send(json.dumps({"command": command}).encode(), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        """Close the socket."""
        if self.sock is not None:
            self.sock.close(0)


def page_json(obj: Any) -> str:
    """What a page is sent: strict JSON (a browser's JSON.parse refuses NaN), non-finite as null."""
    return json.dumps(json_safe(obj), allow_nan=False, default=str)


def _control_command(body: bytes) -> str | None:
    """The ``command`` of a POST /control body, read by the bounded parser (None: none)."""
    try:
        obj = parse_json(body, what="control request", max_bytes=MAX_CONTROL_BYTES)
    except InputRejected as err:
        logger.warning("control request refused: %s", err)
        return None
    return obj.get("command") if isinstance(obj, dict) else None


class PageFeed:
    """What one page has not been sent yet, and how many of its messages it has not acked.

    The tick offers every delta (:meth:`offer`); :meth:`take` hands the sender the merged
    delta once the page has fewer than ``IN_FLIGHT`` messages unacknowledged; the page's
    ``ack`` (:meth:`acked`) lets the next one go.
    """

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None
        self.unacked = 0
        self.last_ack = time.monotonic()
        self.wake = asyncio.Event()

    def offer(self, delta: dict[str, Any]) -> None:
        """A new delta for the page: merged into what it has not been sent yet."""
        self.pending = delta if self.pending is None else merge_deltas(self.pending, delta)
        self.wake.set()

    def acked(self) -> None:
        """The page has handled one message."""
        self.unacked = max(0, self.unacked - 1)
        self.last_ack = time.monotonic()
        self.wake.set()

    def take(self) -> dict[str, Any] | None:
        """The delta to send now, or None (nothing new, or the page is still busy)."""
        if self.pending is None or self.unacked >= IN_FLIGHT:
            return None
        delta, self.pending = self.pending, None
        self.unacked += 1
        return delta

    def stalled(self) -> bool:
        """The page has acknowledged nothing for ``ACK_TIMEOUT_S`` while owing an ack."""
        return self.unacked > 0 and time.monotonic() - self.last_ack > ACK_TIMEOUT_S


def allowed_roots(session: Path, protocol: Any | None) -> list[Path]:
    """Folders whose images a page may fetch: the session's and the protocol's image folders."""
    roots = [session.resolve()]
    if protocol is not None:
        base = Path(protocol.source).resolve().parent if protocol.source else session
        folders = [b.folder for b in protocol.presentation.blocks if b.folder]
        folders += [protocol.presentation.pool_folder, protocol.generation.pool.folder]
        roots += [(base / f).resolve() for f in folders if f]
    return roots


def safe_image(path: str, roots: list[Path]) -> Path | None:
    """``path`` resolved (links followed) if it is an image file inside one of ``roots``."""
    try:
        p = Path(path)
        p = (p if p.is_absolute() else roots[0] / p).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
        return None
    return p if any(p.is_relative_to(r) for r in roots) else None


def build_app(
    view: View,
    tokens: Tokens,
    *,
    control: str | None = None,
    roots: list[Path] | None = None,
) -> Starlette:
    """The dashboard's ASGI application."""
    roots = roots or [view.session]
    clients: set[PageFeed] = set()
    controller = Controller(control, session=view.session if view.live else None)
    page = (STATIC / "index.html").read_text()

    def role_of(request: Request | WebSocket) -> str | None:
        return tokens.role(request.query_params.get("token"))

    def forbidden() -> PlainTextResponse:
        return PlainTextResponse("forbidden: a valid token is needed in the URL", 403)

    async def index(request: Request):
        role = role_of(request)
        if role is None:
            return forbidden()
        controller.discover()
        live = view.live and role == "controller" and controller.sock is not None
        token = request.query_params["token"]  # checked above: URL-safe characters only
        html = page.replace("__ROLE__", role).replace("__CONTROLS__", "1" if live else "0")
        html = html.replace("__TOKEN__", token)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def static(request: Request):
        if role_of(request) is None:
            return forbidden()
        name = request.path_params["name"]
        if name == "plotly.min.js":
            return FileResponse(plotly_js(), media_type="text/javascript")
        if name == "dashboard.js":
            return FileResponse(STATIC / name, media_type="text/javascript")
        return PlainTextResponse("not found", 404)

    async def image(request: Request):
        if role_of(request) is None:
            return forbidden()
        p = safe_image(request.query_params.get("path", ""), roots)
        if p is None:
            return PlainTextResponse("not an image of this session", 404)
        return FileResponse(p, headers={"Cache-Control": "max-age=3600"})

    async def control_route(request: Request):
        if role_of(request) != "controller":
            return forbidden()
        command = _control_command(await request.body())
        if command not in ("pause", "resume", "abort"):
            return JSONResponse({"error": "command must be pause, resume or abort"}, 400)
        if not view.live or not controller.send(command):
            return JSONResponse({"sent": False, "error": "the presentation is not reachable"}, 503)
        logger.info("dashboard command: %s", command)
        return JSONResponse({"sent": True, "command": command})

    async def ws_route(ws: WebSocket):
        if role_of(ws) is None:
            await ws.close(code=1008)  # before accept: the handshake gets 403
            return
        await ws.accept()
        feed = PageFeed()
        feed.unacked = 1  # the snapshot
        clients.add(feed)

        async def read_acks() -> None:
            while True:
                if await ws.receive_text() == "ack":
                    feed.acked()

        reader = asyncio.create_task(read_acks())
        reader.add_done_callback(lambda _: feed.wake.set())  # the page went away
        try:
            await ws.send_text(page_json(view.snapshot()))
            while not reader.done():
                await feed.wake.wait()
                feed.wake.clear()
                if feed.stalled():
                    break  # too slow or gone: closed; it reconnects and gets a snapshot
                delta = feed.take()
                if delta is not None:
                    delta["t_server"] = time.time()  # when it left, merged or not
                    await ws.send_text(page_json(delta))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            clients.discard(feed)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)  # its end, retrieved
            with contextlib.suppress(RuntimeError):
                await ws.close()

    async def ticker() -> None:
        while True:
            try:
                delta = view.tick()
            except Exception:  # a bad line or source must not end the page
                logger.exception("dashboard tick failed")
                delta = None
            for feed in list(clients):
                if delta is not None:
                    feed.offer(delta)
                elif feed.stalled():
                    feed.wake.set()  # its sender closes it
            await asyncio.sleep(TICK_S)

    async def quality() -> None:  # numpy work off the event loop, once a second
        while view.live:
            try:
                view.quality_ready(await asyncio.to_thread(view.compute_quality))
            except Exception:
                logger.exception("dashboard quality failed")
            await asyncio.sleep(QUALITY_EVERY_S)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        tasks = [asyncio.create_task(ticker()), asyncio.create_task(quality())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            controller.close()

    return Starlette(
        routes=[
            Route("/", index),
            Route("/static/{name}", static),
            Route("/image", image),
            Route("/control", control_route, methods=["POST"]),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
            WebSocketRoute("/ws", ws_route),
        ],
        lifespan=lifespan,
    )


def serve(app: Starlette, host: str, port: int) -> None:
    """Run the app with uvicorn until SIGTERM/Ctrl-C."""
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        ws="websockets-sansio",
        timeout_graceful_shutdown=2,
    )
