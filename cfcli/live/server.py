"""The live server: a small Starlette app (the page, uploads, recordings, one WebSocket) served by uvicorn.

The generation worker (`LiveSession`) runs in its own threads; it reports through the `Hub`, which hands each
message to the event loop with `call_soon_threadsafe` and fans it out to per-viewer queues. A viewer's queue holds
at most `MAX_QUEUED_FRAMES` frames: a slow viewer loses its oldest frames (JSON messages are never dropped), the
recording in the generation loop stays complete. One socket at a time controls (the first to `claim`); the others
watch. Off 127.0.0.1 every request and socket needs the token (`?token=`, `Authorization: Bearer`, `X-CF-Token`,
or the cookie the page gets when opened with `?token=`).
"""

import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import tempfile
from collections import OrderedDict, deque
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from cfcli.errors import CfError
from cfcli.live.protocol import CONTROL, MAX_MESSAGE_BYTES, BadMessage, parse
from cfcli.live.session import LiveSession, StartRequest

log = logging.getLogger("cfcli.live")
STATIC = Path(__file__).parent / "static"
MAX_QUEUED_FRAMES = 32
MAX_UPLOADS = 16  # older uploads are deleted
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_CLOSE_CODE = 4401  # a WebSocket refused for a missing or wrong token (before the handshake completes)


@dataclass(frozen=True)
class ServerSettings:
    token: str | None = None  # required on every request when set
    max_upload_bytes: int = 64 * 2**20


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


class Hub:
    """The worker's `Events`: thread-safe hand-over to the event loop, then to every viewer."""

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
            self.loop.call_soon_threadsafe(self._broadcast, item)

    def _broadcast(self, item: str | bytes) -> None:
        for viewer in self.viewers:
            viewer.push(item)


class Uploads:
    """Checked uploads in a server temp dir under server-chosen names; clients refer to them by id only."""

    def __init__(self, limit: int):
        self.dir, self.limit = Path(tempfile.mkdtemp(prefix="cf-live-")), limit
        self.files: OrderedDict[str, tuple[str, Path]] = OrderedDict()

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
            await asyncio.to_thread(check_image if kind == "image" else check_clip, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self.files[uid] = (kind, path)
        while len(self.files) > MAX_UPLOADS:
            self.files.popitem(last=False)[1][1].unlink(missing_ok=True)
        return {"id": uid, "kind": kind, "bytes": size}

    def path(self, uid: str | None, kind: str) -> Path | None:
        if uid is None:
            return None
        found = self.files.get(uid)
        if found is None or found[0] != kind:
            raise CfError(f"no {kind} upload {uid!r}", f"POST the file to /api/uploads/{kind} and use the id it returns")
        return found[1]

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class UploadTooLarge(CfError):
    """An upload over the size limit (HTTP 413; any other refused upload is 415)."""


def check_image(path: Path) -> None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.load()
    except Exception as exc:  # noqa: BLE001 - any failure means "not a picture"
        raise CfError(f"not a picture Pillow can read: {exc}".splitlines()[0], "upload a PNG, JPEG or WebP") from None


def check_clip(path: Path) -> None:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            next(container.decode(container.streams.video[0]))
    except Exception as exc:  # noqa: BLE001
        raise CfError(f"not a video PyAV can decode: {exc}".splitlines()[0], "upload an MP4, MKV or WebM clip") \
            from None


class Guard:
    """ASGI middleware: the token (when one is set), and on a local bind a local Host; sockets from the same origin."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

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
        if self.token is None and host.rsplit(":", 1)[0].strip("[]") not in LOCAL_HOSTS:
            return "this server answers only to localhost"  # DNS rebinding
        origin = headers.get("origin")
        if scope["type"] == "websocket" and origin and origin.split("://", 1)[-1] != host:
            return "cross-origin socket refused"
        if self.token is not None and not secrets.compare_digest(given_token(scope, headers), self.token):
            return "a valid token is required (?token=..., Authorization: Bearer ..., or X-CF-Token)"
        return None


def given_token(scope, headers: dict) -> str:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    if query:
        return query[0]
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if "x-cf-token" in headers:
        return headers["x-cf-token"]
    cookie = SimpleCookie(headers.get("cookie", "")).get("cf_token")
    return cookie.value if cookie else ""


def create_app(session: LiveSession, hub: Hub, settings: ServerSettings = ServerSettings(),
               info: dict | None = None):
    """The ASGI app; `info` (preset, devices, limits) is served at /api/info."""
    uploads = Uploads(settings.max_upload_bytes)
    info = dict(info or {}) | {"auth": settings.token is not None, "max_upload_bytes": settings.max_upload_bytes,
                               "max_message_bytes": MAX_MESSAGE_BYTES}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        hub.loop = asyncio.get_running_loop()
        try:
            yield
        finally:
            await asyncio.to_thread(session.shutdown)
            uploads.remove()

    async def index(request: Request):
        response = FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
        if settings.token is not None:
            response.set_cookie("cf_token", settings.token, httponly=True, samesite="strict")
        return response

    async def api_info(request: Request):
        return JSONResponse(info)

    async def api_status(request: Request):
        return JSONResponse(session.status())

    async def upload(request: Request):
        kind = request.path_params["kind"]
        if kind not in ("image", "clip"):
            return JSONResponse({"type": "error", "message": f"unknown upload kind {kind!r}"}, 404)
        try:
            return JSONResponse(await uploads.receive(kind, request))
        except CfError as exc:
            return JSONResponse({"type": "error", "message": exc.message, "hint": exc.hint},
                                413 if isinstance(exc, UploadTooLarge) else 415)

    async def recording(request: Request):
        path = session.recordings.get(request.path_params["name"])
        if path is None or not path.is_file():
            return PlainTextResponse("no such recording", 404)
        return FileResponse(path, filename=path.name)

    async def recordings(request: Request):
        return JSONResponse([{"name": n, "url": f"/recordings/{n}"} for n in session.recordings])

    async def socket(ws: WebSocket):
        await ws.accept()
        viewer = Viewer(ws)
        hub.viewers.add(viewer)
        pump = asyncio.create_task(viewer.pump())
        viewer.send({"type": "welcome", "role": "viewer", "controlled": hub.controller is not None} | info)
        viewer.send(session.status())
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                handle(viewer, msg.get("text") if msg.get("text") is not None else msg.get("bytes"))
        except WebSocketDisconnect:
            pass
        finally:
            hub.viewers.discard(viewer)
            if hub.controller is viewer:
                hub.controller = None
            pump.cancel()

    def handle(viewer: Viewer, raw) -> None:
        try:
            msg = parse(raw)
            reply = dispatch(viewer, msg)
            if reply:
                viewer.send(reply)
        except BadMessage as exc:
            viewer.send({"type": "error", "message": str(exc)})
        except CfError as exc:
            viewer.send({"type": "error", "message": exc.message, "hint": exc.hint})

    def dispatch(viewer: Viewer, msg: dict) -> dict | None:
        kind = msg["type"]
        if kind == "claim":
            if hub.controller not in (None, viewer):
                raise CfError("another client controls this session", "watch, or ask them to release control")
            hub.controller = viewer
            return {"type": "role", "role": "controller"}
        if kind == "release":
            hub.controller = None if hub.controller is viewer else hub.controller
            return {"type": "role", "role": "viewer"}
        if kind == "status":
            return session.status()
        if kind in CONTROL and hub.controller is not viewer:
            raise CfError("this socket only watches", 'send {"type": "claim"} to take control')
        return control(msg)

    def control(msg: dict) -> dict | None:
        kind = msg["type"]
        if kind == "start":
            session.start(StartRequest(msg["prompt"], pick_seed(msg["seed"]), uploads.path(msg["image"], "image"),
                                       uploads.path(msg["clip"], "clip"),
                                       msg["record"] if msg["record"] is not None else bool(info.get("record"))))
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
            return session.prompt(msg["prompt"])[1]
        return None

    routes = [Route("/", index), Route("/api/info", api_info), Route("/api/status", api_status),
              Route("/api/uploads/{kind}", upload, methods=["POST"]), Route("/api/recordings", recordings),
              Route("/recordings/{name}", recording), WebSocketRoute("/ws", socket),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    app = Starlette(routes=routes, lifespan=lifespan)
    return Guard(app, settings.token)


def pick_seed(seed: int | None) -> int:
    return seed if seed is not None else secrets.randbelow(2**31)


def is_local(host: str) -> bool:
    return host in LOCAL_HOSTS


def serve(app, host: str, port: int) -> None:
    """Run uvicorn until Ctrl-C (the lifespan shutdown stops generation and closes the recording)."""
    import uvicorn

    uvicorn.Server(uvicorn_config(app, host, port)).run()


def uvicorn_config(app, host: str, port: int):
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning", ws_max_size=MAX_MESSAGE_BYTES * 4,
                          lifespan="on", timeout_graceful_shutdown=5)
