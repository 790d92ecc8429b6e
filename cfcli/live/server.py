"""The live server: a small Starlette app (the page, uploads, recordings, one WebSocket) served by uvicorn.

The generation worker (`LiveSession`) runs in its own threads; it reports through the `Broadcast`, which hands each
message to the event loop with `call_soon_threadsafe` and fans it out to per-viewer queues. A viewer's queue holds
at most `MAX_QUEUED_FRAMES` frames: a slow viewer loses its oldest frames (JSON messages are never dropped), the
recording in the generation loop stays complete. One socket at a time controls (the first to `claim`); the others
watch. On a local bind every request must name a local Host (DNS rebinding); with a token every request and socket
needs it (`?token=`, `Authorization: Bearer`, `X-CF-Token`, or the cookie the page gets when opened with `?token=`),
compared as bytes. The routes are module-level functions that read the app's `state.live` (a `Live`).

The listening socket is made first (`bind`), before any model loads, and handed to uvicorn; SIGINT, SIGTERM and
SIGHUP (the terminal closed) all shut the server down through the lifespan, which stops the video and saves its
recording.
"""

import asyncio
import contextlib
import errno
import hmac
import json
import logging
import secrets
import shutil
import signal
import socket
import tempfile
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote_to_bytes

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from cfcli.errors import CfError
from cfcli.live.protocol import CONTROL, MAX_MESSAGE_BYTES, MAX_PREPARE, BadMessage, parse
from cfcli.live.session import LiveSession, StartRequest
from cfcli.lora.spec import LoraSpec

log = logging.getLogger("cfcli.live")
STATIC = Path(__file__).parent / "static"
MAX_QUEUED_FRAMES = 32
MAX_UPLOADS = 16  # older uploads are deleted
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_CLOSE_CODE = 4401  # a WebSocket refused for a missing or wrong token (before the handshake completes)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class ServerSettings:
    token: str | None = None  # required on every request when set
    max_upload_bytes: int = 64 * 2**20
    local: bool = True  # bound to a local address: only a local Host is answered

    def __post_init__(self):
        if self.token == "":
            raise CfError("the token is empty", "give a token of at least one character, or none on a local bind")


class Viewer:
    """One socket's outgoing queue: JSON text always, frames (bytes) up to a bound, oldest dropped first."""

    def __init__(self, ws: WebSocket):
        self.ws, self.items, self.frames, self.dropped = ws, deque(), 0, 0
        self.ready = asyncio.Event()

    def push(self, item: str | bytes) -> None:
        if isinstance(item, bytes):
            if self.frames >= MAX_QUEUED_FRAMES:
                self.items.remove(next(i for i in self.items if isinstance(i, bytes)))
                self.frames, self.dropped = self.frames - 1, self.dropped + 1
            self.frames += 1
        self.items.append(item)
        self.ready.set()

    def send(self, msg: dict) -> None:
        self.push(json.dumps(msg))

    async def pump(self) -> None:
        while True:
            await self.ready.wait()
            self.ready.clear()
            while self.items:
                item = self.items.popleft()
                if isinstance(item, bytes):
                    self.frames -= 1
                    await self.ws.send_bytes(item)
                else:
                    await self.ws.send_text(item)


class Broadcast:
    """The worker's `Outlet`: thread-safe hand-over to the event loop, then to every viewer."""

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None
        self.viewers: set[Viewer] = set()
        self.controller: Viewer | None = None

    def message(self, msg: dict) -> None:
        self._post(json.dumps(msg))

    def frame(self, data: bytes) -> None:
        self._post(data)

    def watching(self) -> bool:
        return bool(self.viewers)

    def _post(self, item: str | bytes) -> None:
        if self.loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self.loop.call_soon_threadsafe(self._send_all, item)

    def _send_all(self, item: str | bytes) -> None:
        for viewer in self.viewers:
            viewer.push(item)


class Uploads:
    """Uploads in a server temp dir under server-chosen names, checked by the pipeline's own checks (a picture by
    `check_image_input`, a clip by `probe_clip`, whose `ClipInfo` is kept so the session does not probe it again);
    clients refer to them by id only."""

    def __init__(self, limit: int, preset=None):
        self.dir, self.limit, self.preset = Path(tempfile.mkdtemp(prefix="cf-live-")), limit, preset
        self.files: OrderedDict[str, tuple[str, Path, object]] = OrderedDict()

    async def receive(self, kind: str, request: Request) -> dict:
        size = int(request.headers.get("content-length") or 0)
        if size > self.limit:
            raise UploadTooLarge(f"the upload is over {self.limit // 2**20} MiB")
        uid = f"{kind}-{secrets.token_hex(8)}"
        path = self.dir / uid
        with path.open("wb") as f:
            async for part in request.stream():
                size = f.tell() + len(part)
                if size > self.limit:
                    break
                f.write(part)
        try:
            if size > self.limit:
                raise UploadTooLarge(f"the upload is over {self.limit // 2**20} MiB")
            checked = await asyncio.to_thread(self.check, kind, path)
        except CfError as exc:
            path.unlink(missing_ok=True)
            raise CfError(exc.message.replace(str(path), f"upload {uid}"), exc.hint) from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self.files[uid] = (kind, path, checked)
        while len(self.files) > MAX_UPLOADS:
            self.files.popitem(last=False)[1][1].unlink(missing_ok=True)
        return {"id": uid, "kind": kind, "bytes": size}

    def check(self, kind: str, path: Path):
        """What a start needs of the upload: the picture's path, or the clip's `ClipInfo`."""
        from cfcli.pipeline.clip_reader import probe_clip
        from cfcli.pipeline.media import check_image_input

        if kind == "clip":
            return probe_clip(path)
        check_image_input(self.preset, path)
        return path

    def get(self, uid: str | None, kind: str):
        """The checked upload `uid`: a picture's path or a clip's `ClipInfo`; None for no id."""
        if uid is None:
            return None
        found = self.files.get(uid)
        if found is None or found[0] != kind:
            raise CfError(f"no {kind} upload {uid!r}",
                          f"POST the file to /api/uploads/{kind} and use the id it returns")
        return found[2]

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class UploadTooLarge(CfError):
    """An upload over the size limit (HTTP 413; any other refused upload is 415)."""


class Guard:
    """ASGI middleware: on a local bind a local Host (always, token or not); the token when one is set, compared as
    bytes; sockets from the same origin."""

    def __init__(self, app, token: str | None, local: bool = True):
        self.app, self.local = app, local
        self.token = None if token is None else token.encode("utf-8", "surrogateescape")

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        why = self.refuse(scope, headers)
        if why is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "http":
            return await PlainTextResponse(why, status_code=401 if "token" in why else 403)(scope, receive, send)
        await send({"type": "websocket.close", "code": TOKEN_CLOSE_CODE, "reason": why})

    def refuse(self, scope, headers: dict) -> str | None:
        host = headers.get("host", "")
        if self.local and host.rsplit(":", 1)[0].strip("[]") not in LOCAL_HOSTS:
            return "this server answers only to localhost"  # DNS rebinding
        origin = headers.get("origin")
        if scope["type"] == "websocket" and origin and origin.split("://", 1)[-1] != host:
            return "cross-origin socket refused"
        if self.token is not None and not hmac.compare_digest(given_token(scope, headers), self.token):
            return "a valid token is required (?token=..., Authorization: Bearer ..., or X-CF-Token)"
        return None


def given_token(scope, headers: dict) -> bytes:
    """The token a request carries, as the bytes the client sent (headers are latin-1 decoded by `Guard`)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), encoding="latin-1").get("token")
    if query:
        return query[0].encode("latin-1")
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip().encode("latin-1")
    if "x-cf-token" in headers:
        return headers["x-cf-token"].encode("latin-1")
    cookie = SimpleCookie(headers.get("cookie", "")).get("cf_token")
    return unquote_to_bytes(cookie.value) if cookie else b""


def quoted(token: str) -> str:
    """The token as it goes into a URL or the cookie (percent-encoded UTF-8)."""
    return quote(token.encode("utf-8", "surrogateescape"), safe="")


@dataclass
class Live:
    """What the routes share, kept in the app's `state.live`."""

    session: LiveSession
    broadcast: Broadcast
    settings: ServerSettings
    info: dict
    osc: object = None  # an `osc.OscControl` with `cf live --osc`, opened and closed by the lifespan
    uploads: Uploads = field(init=False)

    def __post_init__(self):
        self.uploads = Uploads(self.settings.max_upload_bytes, self.session.preset)


def live(conn) -> Live:
    return conn.app.state.live


@contextlib.asynccontextmanager
async def lifespan(app):
    state: Live = app.state.live
    state.broadcast.loop = asyncio.get_running_loop()
    if state.osc is not None:
        await state.osc.open(state)
    try:
        yield
    finally:
        if state.osc is not None:
            state.osc.close()
        await asyncio.to_thread(state.session.shutdown)
        state.uploads.remove()


async def index(request: Request):
    response = FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
    if (token := live(request).settings.token) is not None:
        response.set_cookie("cf_token", quoted(token), httponly=True, samesite="strict")
    return response


async def api_info(request: Request):
    return JSONResponse(live(request).info)


async def api_status(request: Request):
    return JSONResponse(live(request).session.status())


async def upload(request: Request):
    kind = request.path_params["kind"]
    if kind not in ("image", "clip"):
        return JSONResponse({"type": "error", "message": f"unknown upload kind {kind!r}"}, 404)
    try:
        return JSONResponse(await live(request).uploads.receive(kind, request))
    except CfError as exc:
        return JSONResponse({"type": "error", "message": exc.message, "hint": exc.hint},
                            413 if isinstance(exc, UploadTooLarge) else 415)


async def recording(request: Request):
    path = live(request).session.recordings.get(request.path_params["name"])
    if path is None or not path.is_file():
        return PlainTextResponse("no such recording", 404)
    return FileResponse(path, filename=path.name)


async def recordings(request: Request):
    return JSONResponse([{"name": n, "url": f"/recordings/{n}"} for n in live(request).session.recordings])


async def socket_route(ws: WebSocket):
    state = live(ws)
    await ws.accept()
    viewer = Viewer(ws)
    state.broadcast.viewers.add(viewer)
    pump = asyncio.create_task(viewer.pump())
    viewer.send({"type": "welcome", "role": "viewer", "controlled": state.broadcast.controller is not None}
                | state.info)
    viewer.send(state.session.status())
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            handle(state, viewer, msg.get("text") if msg.get("text") is not None else msg.get("bytes"))
    except WebSocketDisconnect:
        pass
    finally:
        state.broadcast.viewers.discard(viewer)
        if state.broadcast.controller is viewer:
            state.broadcast.controller = None
        pump.cancel()


def handle(state: Live, viewer: Viewer, raw) -> None:
    """One client message: a reply, or an `error` reply; the socket stays open whatever the message held."""
    try:
        reply = dispatch(state, viewer, parse(raw))
        if reply:
            viewer.send(reply)
    except BadMessage as exc:
        viewer.send({"type": "error", "message": str(exc)})
    except CfError as exc:
        viewer.send({"type": "error", "message": exc.message, "hint": exc.hint})
    except Exception as exc:  # noqa: BLE001 - the last net: a reply, never a dropped socket
        log.exception("live message failed")
        viewer.send({"type": "error", "message": f"the message could not be handled: {type(exc).__name__}"})


def dispatch(state: Live, viewer: Viewer, msg: dict) -> dict | None:
    kind, broadcast = msg["type"], state.broadcast
    if kind == "claim":
        if broadcast.controller not in (None, viewer):
            raise CfError("another client controls this session", "watch, or ask them to release control")
        broadcast.controller = viewer
        return {"type": "role", "role": "controller"}
    if kind == "release":
        broadcast.controller = None if broadcast.controller is viewer else broadcast.controller
        return {"type": "role", "role": "viewer"}
    if kind == "status":
        return state.session.status()
    if kind in CONTROL and broadcast.controller is not viewer:
        raise CfError("this socket only watches", 'send {"type": "claim"} to take control')
    return control(state, msg)


def control(state: Live, msg: dict) -> dict | None:
    kind, session, uploads = msg["type"], state.session, state.uploads
    if kind == "start":
        record = msg["record"] if msg["record"] is not None else bool(state.info.get("record"))
        session.start(StartRequest(msg["prompt"], pick_seed(msg["seed"]), uploads.get(msg["image"], "image"),
                                   uploads.get(msg["clip"], "clip"), record))
    elif kind == "restart":
        last = session.last_request
        if last is None:
            raise CfError("nothing to restart", "send start first")
        seed = msg["seed"] if msg["seed"] is not None else (pick_seed(None) if msg["new_seed"] else last.seed)
        session.restart(StartRequest(msg["prompt"] or last.prompt, seed, last.image, last.clip, last.record))
    elif kind == "stop":
        session.stop()
    elif kind == "record":
        session.record(msg["on"])
    elif kind == "prompt":
        return session.prompt(msg["prompt"], msg["transition"])[1]
    elif kind == "prepare":
        return session.prepare(msg["prompts"])
    elif kind == "loras":
        return session.set_loras([LoraSpec(e["file"], e["scale"]) for e in msg["loras"]])[1]
    return {"type": "ack", "for": kind, "state": "received"}  # applied: `started`, `ended`, the record ack


ROUTES = [Route("/", index), Route("/api/info", api_info), Route("/api/status", api_status),
          Route("/api/uploads/{kind}", upload, methods=["POST"]), Route("/api/recordings", recordings),
          Route("/recordings/{name}", recording), WebSocketRoute("/ws", socket_route),
          Mount("/static", StaticFiles(directory=STATIC), name="static")]


def create_app(session: LiveSession, broadcast: Broadcast, settings: ServerSettings = ServerSettings(),
               info: dict | None = None, routes: list = (), lifespan=lifespan, osc=None):
    """The ASGI app; `info` (preset, devices, limits) is served at /api/info. `routes` and `lifespan`: what a server
    that serves more than the live page (`cf serve`) adds, and its lifespan (which must run `live.lifespan`). `osc`:
    the `osc.OscControl` that `cf live --osc` serves beside the page."""
    refusal = session.lora_refusal()
    info = dict(info or {}) | {"auth": settings.token is not None, "max_upload_bytes": settings.max_upload_bytes,
                               "max_message_bytes": MAX_MESSAGE_BYTES, "max_prepare": MAX_PREPARE,
                               "lora_swaps": refusal is None,
                               "lora_note": None if refusal is None else f"{refusal.message} → {refusal.hint}"}
    app = Starlette(routes=[*routes, *ROUTES], lifespan=lifespan)
    app.state.live = Live(session, broadcast, settings, info, osc)
    return Guard(app, settings.token, settings.local)


def page_info(engine, encoder, record: bool, seed: int | None, max_seconds: float | None) -> dict:
    """What the page shows of the server: the preset, its size and devices, and the start defaults."""
    p = engine.preset
    return {"preset": p.name, "mode": p.mode, "fps": p.fps, "width": p.width, "height": p.height,
            "device": str(engine.device), "text_device": str(encoder.text_device), "record": record, "seed": seed,
            "max_seconds": max_seconds}


def pick_seed(seed: int | None) -> int:
    return seed if seed is not None else secrets.randbelow(2**31)


def is_local(host: str) -> bool:
    return host in LOCAL_HOSTS


def unbound_socket(host: str, port: int, kind: int, option: str) -> tuple[socket.socket, tuple]:
    """A socket of `kind` for `host` (given as `option`) and the address to bind it to; an unresolvable host is
    refused."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise CfError(f"{option} {host} cannot be resolved: {getattr(exc, 'strerror', None) or exc}",
                      "use an address such as 127.0.0.1 (this machine) or 0.0.0.0 (every interface)") from None
    return socket.socket(family, kind, proto), address


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, made before anything loads: an unresolvable host or a busy port is refused now."""
    sock, address = unbound_socket(host, port, socket.SOCK_STREAM, "--host")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: restarts reuse the port
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise bind_error(host, port, exc) from None
    return sock


def bind_error(host: str, port: int, exc: OSError) -> CfError:
    if exc.errno == errno.EADDRINUSE:
        return CfError(f"port {port} is busy: another program listens on {host}:{port}",
                       f"choose another port, e.g. --port {port + 1 if port < 65535 else 8000}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return CfError(f"this user may not listen on port {port}", "use a port from 1024 up, e.g. --port 7860")
    if exc.errno == errno.EADDRNOTAVAIL:
        return CfError(f"--host {host} is not an address of this machine",
                       "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
    return CfError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", "choose another --host or --port")


def serve(app, sock: socket.socket, on_stop=lambda signum: None, grace_s: float = 5) -> int:
    """Run uvicorn on `sock` until SIGINT, SIGTERM or SIGHUP; the lifespan shutdown stops generation and saves the
    recording. `on_stop(signum)` hears the signal first (`cf serve` cancels its jobs there); open requests get
    `grace_s` to finish. The signal that stopped it, 0 for none."""
    server = Server(uvicorn_config(app, grace_s=grace_s))
    server.on_stop = on_stop
    server.run(sockets=[sock])
    return server.signum


class Server(uvicorn.Server):
    """uvicorn's server, stopped the same graceful way by SIGHUP (a closed terminal) as by SIGINT and SIGTERM:
    uvicorn handles only those two, and SIGHUP's default ends the process with no shutdown, so no recording."""

    signum = 0  # the first stop signal
    on_stop = staticmethod(lambda signum: None)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self.handle_exit) for s in STOP_SIGNALS}
        try:
            yield
        finally:  # uvicorn would raise the signal again here; `serve` returns it instead, for the exit status
            for s, handler in old.items():
                signal.signal(s, handler)

    def handle_exit(self, sig, frame) -> None:
        if not self.signum:
            self.on_stop(sig)
        self.signum = self.signum or sig
        super().handle_exit(sig, frame)


def uvicorn_config(app, host: str = "127.0.0.1", port: int = 0, grace_s: float = 5):
    return uvicorn.Config(app, host=host, port=port, log_level="warning", ws_max_size=MAX_MESSAGE_BYTES * 4,
                          lifespan="on", timeout_graceful_shutdown=grace_s)
