"""`cf live --osc PORT`: Open Sound Control over UDP, onto the same control path as the WebSocket.

Each OSC message is turned into the JSON message of the same meaning (`ADDRESSES`) and handed to the server's own
`handle`, so `protocol.parse` checks it and the claim rule applies: OSC can do nothing the socket API refuses. The
OSC sender is one more client (`OscClient`) that must `/cf/claim` before it controls. OSC has no reply channel of
its own: a refused message is logged with its reason and answered with `/cf/error <message> <hint>` to the address
it came from. python-osc parses the packets (bundles included); the datagram endpoint runs on the server's event
loop, on a socket bound before any model loads (`bind_osc`), as the HTTP port is.
"""

import errno
import hmac
import json
import logging
import socket

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket, ParseError

from cfcli.errors import CfError

log = logging.getLogger("cfcli.live.osc")

# address → (the JSON message type, its fields in argument order; "a.b": field b of the object a); see docs/live.md
# "OSC"
ADDRESSES: dict[str, tuple[str, tuple[str, ...]]] = {
    "/cf/claim": ("claim", ()),
    "/cf/release": ("release", ()),
    "/cf/start": ("start", ("prompt", "seed")),
    "/cf/prompt": ("prompt", ("prompt", "transition.blocks", "transition.kind")),
    "/cf/seed": ("restart", ("seed",)),  # start again with this seed
    "/cf/restart": ("restart", ()),
    "/cf/stop": ("stop", ()),
    "/cf/record": ("record", ("on",)),
    "/cf/loras": ("loras", ()),  # <file> <scale> pairs: the whole list, none to unload them all
    "/cf/prepare": ("prepare", ()),  # <prompt> ...: encode them ahead, so /cf/prompt with one later runs no umT5
}
ARG_TYPES = (str, int, float, bool, type(None))  # OSC s/i/f/d/h/T/F/N; blobs, MIDI and time tags are refused


def bind_osc(host: str, port: int, token: str | None) -> socket.socket:
    """The OSC UDP socket, bound before anything loads: a bad port, a busy one, or a host off this machine with no
    `--token` is refused now."""
    from cfcli.live.server import is_local, unbound_socket

    if not 0 <= port <= 65535:
        raise CfError(f"--osc {port} is out of range", "use 1024 to 65535, e.g. --osc 9000 (0: any free port)")
    if not is_local(host) and token is None:
        raise CfError(f"--osc-host {host} is not local, and OSC would take commands from anyone who can reach it",
                      "add --token T (every OSC message then ends with T), or leave out --osc-host (127.0.0.1)")
    sock, address = unbound_socket(host, port, socket.SOCK_DGRAM, "--osc-host")
    try:
        sock.bind(address)  # no SO_REUSEADDR: on UDP it would let two programs share the port
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CfError(f"OSC port {port} is busy: another program listens on udp {host}:{port}",
                          f"choose another port, e.g. --osc {port + 1 if port < 65535 else 9000}") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise CfError(f"--osc-host {host} is not an address of this machine",
                          "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
        raise CfError(f"cannot listen for OSC on udp {host}:{port}: {exc.strerror or exc}",
                      "choose another --osc-host or --osc port") from None
    return sock


def to_message(address: str, args: list, token: str | None) -> dict:
    """The JSON message an OSC message means (still to be checked by `protocol.parse`); CfError when it means none."""
    if token is not None:
        given = args[-1] if args else None
        if not isinstance(given, str) or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                                                 token.encode("utf-8", "surrogateescape")):
            raise CfError("a valid token is required", "end every OSC message with the token as a string argument")
        args = args[:-1]
    if address not in ADDRESSES:
        raise CfError(f"unknown OSC address {address}", f"use one of: {', '.join(ADDRESSES)}")
    if any(not isinstance(a, ARG_TYPES) for a in args):
        raise CfError(f"{address}: arguments must be strings, numbers, true/false or nil",
                      "blobs, MIDI messages and time tags are not read")
    kind, names = ADDRESSES[address]
    if kind == "loras":
        if len(args) % 2:
            raise CfError(f"{address}: give <file> <scale> pairs", f"e.g. {address} /loras/ink.safetensors 0.8")
        return {"type": kind, "loras": [{"file": f, "scale": s} for f, s in zip(args[::2], args[1::2])]}
    if kind == "prepare":  # the strings are checked by `protocol.parse`
        return {"type": kind, "prompts": list(args)}
    if len(args) > len(names):
        shown = " ".join(n.rpartition(".")[2] for n in names) or "none"
        raise CfError(f"{address} takes at most {len(names)} argument(s): {shown}", "see docs/live.md, OSC")
    msg = {"type": kind}
    for name, arg in zip(names, args):
        outer, _, inner = name.partition(".")
        if inner:  # checked by `protocol.parse` as the socket's object is
            msg.setdefault(outer, {})[inner] = arg
        else:
            msg[name] = arg
    if kind == "record":  # a toggle sends 0/1 (int or float) or T/F
        on = msg.get("on")
        if not isinstance(on, bool) and on not in (0, 1):
            raise CfError(f"{address}: give 1 (keep the recording) or 0 (drop it)", f"e.g. {address} 1")
        msg["on"] = bool(on) if on is not None else on
    return msg


class OscClient:
    """The OSC sender as the server sees it: a client that may claim control. Replies other than errors are only
    logged (at debug); errors are logged and sent back as `/cf/error`."""

    def __init__(self, transport=None):
        self.transport, self.address, self.sender = transport, "", None

    def send(self, msg: dict) -> None:
        if msg.get("type") != "error":
            log.debug("osc %s: %s", self.address, msg)
            return
        hint = (msg.get("hint") or "").replace('{"type": "claim"}', "/cf/claim")
        log.warning("osc %s from %s refused: %s%s", self.address, where(self.sender), msg["message"],
                    f" → {hint}" if hint else "")
        if self.transport is not None and self.sender is not None:
            reply = OscMessageBuilder("/cf/error")
            reply.add_arg(msg["message"])
            reply.add_arg(hint)
            self.transport.sendto(reply.build().dgram, self.sender)


class OscControl:
    """The OSC endpoint of one live server: `open` it on the server's loop (its lifespan), `close` it there."""

    def __init__(self, sock: socket.socket, token: str | None):
        self.sock, self.token, self.transport = sock, token, None
        self.client = OscClient()

    async def open(self, state) -> None:
        import asyncio

        control = self

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr) -> None:
                control.received(state, data, addr)

        self.transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Protocol, sock=self.sock)
        self.client.transport = self.transport

    def received(self, state, data: bytes, addr) -> None:
        """One datagram: each message in it goes through the server's `handle`, as a socket's text would."""
        from cfcli.live.server import handle

        self.client.sender = addr
        try:
            messages = [m.message for m in OscPacket(data).messages]
        except ParseError as exc:
            self.client.address = "packet"
            return self.client.send({"type": "error", "message": f"not an OSC packet: {exc}"})
        for m in messages:
            self.client.address = m.address
            try:
                text = json.dumps(to_message(m.address, list(m.params), self.token))
            except CfError as exc:
                self.client.send({"type": "error", "message": exc.message, "hint": exc.hint})
                continue
            handle(state, self.client, text)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.sock.close()


def where(addr) -> str:
    return f"{addr[0]}:{addr[1]}" if addr else "?"
