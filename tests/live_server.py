"""Test helpers for `cf live`: the real app served by uvicorn in a thread on a free port, and a socket client."""

import json
import socket
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

from cfcli.live.protocol import decode_header


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(preset, out_dir, codec="ffv1", max_seconds=1.0, token=None, host="127.0.0.1", lead=1.0,
                max_upload_bytes=2**20, osc=None):
    """Yield (url, ws url, session) of a live server on the tiny `preset` (CPU, float32); `osc`: a bound OSC
    socket it serves too."""
    import uvicorn

    from cfcli.cli.live import build_app, load
    from cfcli.live.server import uvicorn_config
    from cfcli.live.session import LiveConfig
    from cfcli.session import Session

    engine, encoder = load(Session(str(preset), device="cpu", dtype="float32"), max_seconds, None)
    config = LiveConfig(out_dir, codec, 18, lead, max_seconds)
    app, session = build_app(engine, encoder, config, token, max_upload_bytes=max_upload_bytes, host=host, osc=osc)
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, host, port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the live server did not start"
        time.sleep(0.02)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", ws=f"ws://127.0.0.1:{port}/ws", session=session)
    finally:
        server.should_exit = True
        thread.join(30)


class Client:
    """A WebSocket client that keeps every message and frame header it reads."""

    def __init__(self, url: str, **kwargs):
        from websockets.sync.client import connect

        self._connection = connect(url, max_size=2**24, **kwargs)
        self.ws = self._connection.__enter__()
        self.messages, self.frames = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._connection.__exit__(*exc)

    def send(self, **msg) -> None:
        self.ws.send(json.dumps(msg))

    def until(self, test=lambda m: False, frames: int | None = None, timeout: float = 120.0) -> dict | None:
        """Read until a message passes `test` (returned) or `frames` frames have arrived in all."""
        deadline = time.monotonic() + timeout
        while frames is None or len(self.frames) < frames:
            data = self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(data, bytes):
                self.frames.append(decode_header(data) | {"bytes": len(data)})
                continue
            msg = json.loads(data)
            self.messages.append(msg)
            if test(msg):
                return msg
        return None

    def kind(self, kind: str, **fields):
        return self.until(lambda m: m["type"] == kind and all(m.get(k) == v for k, v in fields.items()))
