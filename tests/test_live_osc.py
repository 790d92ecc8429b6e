"""`cf live --osc`: OSC messages (python-osc's UDP client) steer a live server on a tiny preset (CPU) through the
socket API's own checks; refused ones are logged and answered with `/cf/error`, and the video goes on."""

import logging
import socket

import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.udp_client import SimpleUDPClient

from cfcli.errors import CfError
from cfcli.live.osc import bind_osc, to_message
from cfcli.pipeline.video import read_video

from conftest import FIXTURES, PROMPT
from live_server import Client, live_server

FRAMEWISE = FIXTURES / "tiny-framewise.yaml"
JUMP = "the fox jumps into the river"


def send_raw(sock: socket.socket, port: int, address: str, *args) -> None:
    msg = OscMessageBuilder(address)
    for a in args:
        msg.add_arg(a)
    sock.sendto(msg.build().dgram, ("127.0.0.1", port))


def test_osc_steers_a_live_video_and_refusals_leave_it_running(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="cfcli.live.osc")
    osc = bind_osc("127.0.0.1", 0, None)
    port = osc.getsockname()[1]
    with live_server(FRAMEWISE, tmp_path / "live", max_seconds=2.0, osc=osc) as srv, Client(srv.ws) as c, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.settimeout(10)
        send_raw(raw, port, "/cf/prompt", JUMP)  # not claimed yet: refused as a watching socket's would be
        reply = OscMessage(raw.recv(4096))
        assert reply.address == "/cf/error" and "only watches" in reply.params[0] and "/cf/claim" in reply.params[1]
        client = SimpleUDPClient("127.0.0.1", port)
        client.send_message("/cf/claim", [])
        client.send_message("/cf/record", 2)  # not 0 or 1
        client.send_message("/cf/seed", -1)  # protocol.parse: the seed must be in [0, 2^63)
        client.send_message("/cf/launch", [])
        client.send_message("/cf/start", [PROMPT, 5])
        assert c.kind("started")["seed"] == 5
        c.until(frames=1)
        client.send_message("/cf/start", [PROMPT, 6])  # the session refuses: a video is already running
        client.send_message("/cf/prompt", JUMP)
        landed = c.kind("prompt", state="landed")
        assert c.kind("ended")["reason"] == "limit"
        assert c.kind("recording")["frames"] == 33
    assert landed["prompt"] == JUMP and landed["latent"] >= 1
    refusals = [r.getMessage() for r in caplog.records]
    for phrase in ("only watches", "give 1 (keep the recording) or 0", "the seed must be in [0, 2^63)",
                   "unknown OSC address /cf/launch", "a video is already running"):
        assert sum(phrase in r for r in refusals) == 1, (phrase, refusals)


@pytest.mark.parametrize("address, args, token, expected", [
    ("/cf/prompt", ["a fox"], None, {"type": "prompt", "prompt": "a fox"}),
    ("/cf/prompt", ["a fox", 3], None, {"type": "prompt", "prompt": "a fox", "transition": {"blocks": 3}}),
    ("/cf/prompt", ["a fox", 2, "spherical"], None, {"type": "prompt", "prompt": "a fox",
                                                      "transition": {"blocks": 2, "kind": "spherical"}}),
    ("/cf/start", ["a fox"], None, {"type": "start", "prompt": "a fox"}),
    ("/cf/seed", [7], None, {"type": "restart", "seed": 7}),
    ("/cf/record", [0.0], None, {"type": "record", "on": False}),
    ("/cf/record", [True], None, {"type": "record", "on": True}),
    ("/cf/loras", ["/l/ink.safetensors", 0.5], None, {"type": "loras",
                                                      "loras": [{"file": "/l/ink.safetensors", "scale": 0.5}]}),
    ("/cf/loras", [], None, {"type": "loras", "loras": []}),
    ("/cf/prepare", ["a fox", "a kite"], None, {"type": "prepare", "prompts": ["a fox", "a kite"]}),
    ("/cf/stop", ["s3cret"], "s3cret", {"type": "stop"}),
])
def test_osc_addresses_map_onto_socket_messages(address, args, token, expected):
    assert to_message(address, args, token) == expected


@pytest.mark.parametrize("address, args, token, phrase", [
    ("/cf/stop", [], "s3cret", "token is required"), ("/cf/stop", ["wrong"], "s3cret", "token is required"),
    ("/cf/prompt", ["a", 2, "linear", "b"], None, "at most 3 argument\\(s\\): prompt blocks kind"),
    ("/cf/prompt", [b"\x00"], None, "blobs"),
    ("/cf/loras", ["/l/ink.safetensors"], None, "pairs"), ("/cf/record", [], None, "give 1"),
])
def test_osc_messages_that_mean_nothing_are_refused(address, args, token, phrase):
    with pytest.raises(CfError, match=phrase):
        to_message(address, args, token)


def test_an_osc_prompt_blends_in_and_bad_transitions_get_the_apis_refusal(tmp_path, caplog):
    """`/cf/prompt <text> <blocks> <kind>` lands as the socket's `transition` does: the receipts and the recording
    keep it; bad blocks or kinds are refused with `protocol.parse`'s words and the video goes on."""
    caplog.set_level(logging.WARNING, logger="cfcli.live.osc")
    osc = bind_osc("127.0.0.1", 0, None)
    client = SimpleUDPClient("127.0.0.1", osc.getsockname()[1])
    with live_server(FRAMEWISE, tmp_path / "live", max_seconds=1.25, osc=osc) as srv, Client(srv.ws) as c:
        client.send_message("/cf/claim", [])
        client.send_message("/cf/start", [PROMPT, 5])
        c.until(frames=1)
        for bad in ([JUMP, 65], [JUMP, 2.0], [JUMP, 2, "cubic"], [JUMP, 2, "slerp"], [JUMP, None, "spherical"]):
            client.send_message("/cf/prompt", bad)
        client.send_message("/cf/prompt", [JUMP, 2, "spherical"])
        landed = c.kind("prompt", state="landed")
        assert c.kind("ended")["reason"] == "limit"
        rec = c.kind("recording")
    assert landed["prompt"] == JUMP and landed["transition"] == {"blocks": 2, "kind": "spherical"}
    assert read_video(tmp_path / "live" / rec["name"]).metadata["prompt_schedule"] == [
        [0.0, PROMPT], [landed["seconds"], JUMP, {"blocks": 2, "kind": "spherical"}]]
    refusals = [r.getMessage() for r in caplog.records]
    assert sum('prompt: transition must be {"blocks": 0-64' in r for r in refusals) == 3, refusals
    assert sum('prompt: transition kind must be "linear" or "spherical"' in r for r in refusals) == 2, refusals


def test_osc_port_and_host_are_checked_before_loading(cf, monkeypatch):
    with pytest.raises(CfError, match="not local"):
        bind_osc("0.0.0.0", 0, None)
    bind_osc("0.0.0.0", 0, "s3cret").close()  # with a token it may listen off localhost
    monkeypatch.setattr("cfcli.cli.live.load", lambda *a, **k: pytest.fail("models loaded for a bad value"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        r = cf("live", "--preset", FRAMEWISE, "--device", "cpu", "--port", 0, "--osc", port)
        assert r.exit_code == 1 and f"OSC port {port} is busy" in r.output and "--osc" in r.output, r.output
    r = cf("live", "--preset", FRAMEWISE, "--device", "cpu", "--port", 0, "--osc", 0, "--osc-host", "0.0.0.0")
    assert r.exit_code == 1 and "--osc-host 0.0.0.0 is not local" in r.output and "--token" in r.output, r.output
