"""`cf live` under every way it can stop and every value and message it can be given: stop signals and a killed server
keep the recording, messages that escape the parser get an `error`, restarts replace each other, values and a busy
port are refused before anything loads, tokens are bytes, a continued clip keeps its rate."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cfcli.live.protocol import BadMessage, parse
from cfcli.pipeline.video import VideoWriter, read_video

from conftest import FIXTURES, PROMPT
from live_server import Client, free_port, live_server

FRAMEWISE = FIXTURES / "tiny-framewise.yaml"
ROOT = Path(__file__).parents[1]


# --- stop signals and a killed server -------------------------------------------------------------------------------

def start_cf_live(out_dir: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cfcli", "live", "--preset", str(FRAMEWISE), "--device", "cpu", "--dtype",
           "float32", "--port", str(port), "--out-dir", str(out_dir), "--max-seconds", "60", "--codec", "h264"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=os.environ | {"PYTHONPATH": str(ROOT)})


def run_a_video(run: subprocess.Popen, port: int, frames: int) -> None:
    """Wait for the server, start a recorded video, and read until `frames` frames have streamed."""
    deadline = time.monotonic() + 120
    while True:
        assert run.poll() is None, run.communicate()[1].decode()
        assert time.monotonic() < deadline, "cf live did not start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    with Client(f"ws://127.0.0.1:{port}/ws") as c:
        c.send(type="claim")
        c.send(type="start", prompt=PROMPT, seed=2, record=True)
        c.until(frames=frames)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_every_stop_signal_saves_the_recording(tmp_path, signum):
    port, out = free_port(), tmp_path / "live"
    run = start_cf_live(out, port)
    try:
        run_a_video(run, port, frames=6)
        run.send_signal(signum)
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    err = err.decode()
    assert run.returncode == 128 + signum and "Traceback" not in err, err
    saved = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert len(saved) == 1 and saved[0].suffix == ".mp4" and ".partial" not in saved[0].name, sorted(out.iterdir())
    clip = read_video(saved[0])
    assert clip.frames.shape[0] == clip.metadata["frames"] >= 6 and clip.metadata["live"] is True
    assert not [p for p in out.iterdir() if p.name.startswith(".") and "partial" in p.name]


def test_a_killed_server_leaves_a_playable_recording_that_the_next_start_reports(tmp_path, cf, monkeypatch):
    port, out = free_port(), tmp_path / "live"
    run = start_cf_live(out, port)
    try:
        run_a_video(run, port, frames=40)  # past the encoder's lookahead and a few fragments
        run.kill()  # SIGKILL: no shutdown at all
        run.communicate(timeout=30)
    finally:
        run.kill()
    hidden = [p for p in out.iterdir() if p.name.endswith(".mp4") and p.name.startswith(".")]
    assert len(hidden) == 1
    assert playable(hidden[0])[0] >= 8  # fragmented MP4: what reached the disk plays
    monkeypatch.setattr("cfcli.cli.live.load", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    r = cf("live", "--preset", FRAMEWISE, "--device", "cpu", "--port", free_port(), "--out-dir", out)
    kept = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert len(kept) == 1 and kept[0].name.endswith(".partial.mp4") and str(kept[0]) in r.output, r.output
    frames, meta = playable(kept[0])
    assert frames >= 8 and meta["prompt"] == PROMPT and meta["live"] is True
    assert not [p for p in out.iterdir() if p.name.startswith(".") and ".partial" in p.name]


def playable(path) -> tuple[int, dict]:
    """(Frames a player shows, cfcli metadata) of a recording whose writer was killed: the packet being written at
    the SIGKILL may be cut short, and decoding stops there, as a player's does."""
    import av

    from cfcli.pipeline.video import read_metadata

    with av.open(str(path)) as container:
        meta, frames = read_metadata(container), 0
        try:
            for _ in container.decode(container.streams.video[0]):
                frames += 1
        except av.error.InvalidDataError:
            pass
    return frames, meta


def test_a_live_servers_file_is_not_taken(tmp_path):
    from cfcli.live.recording import Recording, recover_partials

    rec = Recording(tmp_path, "busy", 16, 80, 48, "ffv1", 18)
    try:
        assert recover_partials(tmp_path) == [] and rec.target.temp.exists()
    finally:
        rec.abort()


def test_metadata_that_cannot_be_written_keeps_the_frames(tmp_path, monkeypatch):
    def fail(path, metadata):
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    monkeypatch.setattr("cfcli.live.recording.rewrite_metadata", fail)
    with live_server(FRAMEWISE, tmp_path / "live", max_seconds=0.5) as srv, Client(srv.ws) as c:
        c.send(type="claim")
        c.send(type="start", prompt=PROMPT, seed=1, record=True)
        assert "without its full metadata" in c.kind("error")["message"]
        rec = c.kind("recording")
    clip = read_video(tmp_path / "live" / rec["name"])
    assert clip.frames.shape[0] == rec["frames"] == 9 and clip.metadata["prompt"] == PROMPT


# --- messages -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ['{"type": "start", "prompt": "\\ud800"}', '{"type": "prompt", "prompt": "a\\udfff"}',
                                 '{"type": "restart", "prompt": "\\ud800b"}'])
def test_a_prompt_no_file_can_hold_is_refused_at_the_edge(raw):
    with pytest.raises(BadMessage, match="not valid Unicode"):
        parse(raw)


@pytest.mark.parametrize("raw", ["[" * 5000 + "]" * 5000, '{"type": "status", "n": ' + "9" * 4301 + "}",
                                 '{"type": "start", "prompt": "a", "seed": ' + "1" * 5000 + "}"])
def test_messages_that_escape_the_json_parser_are_refused(raw):
    with pytest.raises(BadMessage):
        parse(raw)


def test_malformed_messages_get_errors_and_the_socket_stays(tmp_path):
    with live_server(FRAMEWISE, tmp_path / "live") as srv, Client(srv.ws) as c:
        c.send(type="claim")
        c.kind("role")
        for raw in ("[" * 5000 + "]" * 5000, '{"type": "status", "n": ' + "9" * 4301 + "}",
                    '{"type": "start", "prompt": "\\ud800"}'):
            c.ws.send(raw)
            assert c.kind("error")
        c.send(type="status")
        assert c.kind("status")["state"] == "idle"


def test_restarts_replace_each_other_and_stop_still_stops(tmp_path):
    with live_server(FRAMEWISE, tmp_path / "live", max_seconds=30.0) as srv, Client(srv.ws) as c:
        c.send(type="claim")
        c.send(type="start", prompt=PROMPT, seed=1, record=False)
        c.until(frames=1)
        for seed in range(10, 20):
            c.send(type="restart", seed=seed)
        c.send(type="stop")
        c.kind("status", state="idle")
        time.sleep(2.0)
        c.send(type="status")
        assert c.kind("status")["state"] == "idle"
    started = [m["seed"] for m in c.messages if m["type"] == "started"]
    assert len(started) <= 2 and started[0] == 1, started


# --- values checked before anything loads ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, phrase", [
    (["--port", "-1"], "--port -1 is out of range"), (["--port", "70000"], "--port 70000 is out of range"),
    (["--max-seconds", "1e308"], "longer than the model can make"), (["--lead", "nan"], "--lead must be"),
    (["--lead", "inf"], "--lead must be"), (["--max-upload-mb", "0"], "--max-upload-mb must be at least 1"),
    (["--max-upload-mb", "-5"], "--max-upload-mb must be at least 1"),
    (["--measure-latency", "-3"], "--measure-latency must be at least 1"), (["--token", ""], "--token is empty"),
    (["--host", "no-such-host.invalid"], "cannot be resolved"), (["--switch-at", "frames"], "--switch-at 'frames'"),
])
def test_cf_live_refuses_values_before_loading(cf, monkeypatch, args, phrase):
    monkeypatch.setattr("cfcli.cli.live.load", lambda *a, **k: pytest.fail("models loaded for a bad value"))
    r = cf("live", "--preset", FRAMEWISE, "--device", "cpu", "--port", free_port(), *args)
    assert r.exit_code == 1 and phrase in r.output and "→" in r.output and "Traceback" not in r.output, r.output
    assert r.output.count("error:") == 1


def test_a_busy_port_is_named_before_loading(cf, monkeypatch):
    monkeypatch.setattr("cfcli.cli.live.load", lambda *a, **k: pytest.fail("models loaded on a busy port"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = cf("live", "--preset", FRAMEWISE, "--device", "cpu", "--port", port)
    assert r.exit_code == 1 and f"port {port} is busy" in r.output and "--port" in r.output, r.output
    assert "Errno" not in r.output and "live:" not in r.output


# --- the token and the Host -----------------------------------------------------------------------------------------

def test_the_host_check_stands_with_a_token_and_tokens_are_bytes(tmp_path):
    with live_server(FRAMEWISE, tmp_path / "live", token="s3cret") as srv:  # a local bind, with a token
        assert httpx.get(srv.url + "/api/info?token=s3cret").json()["auth"] is True
        r = httpx.get(srv.url + "/api/info?token=s3cret", headers={"Host": "evil.example"})
        assert r.status_code == 403  # DNS rebinding, token or not
        assert httpx.get(srv.url + "/api/info?token=s%C3%A9cret").status_code == 401  # not a 500
        assert httpx.get(srv.url + "/api/info", headers={"X-CF-Token": "sé".encode()}).status_code == 401
    with live_server(FRAMEWISE, tmp_path / "live", token="sécret", host="0.0.0.0") as srv:
        assert httpx.get(srv.url + "/api/info?token=s%C3%A9cret").json()["auth"] is True
        assert httpx.get(srv.url + "/api/info", headers={"X-CF-Token": "sécret".encode()}).status_code == 200
        assert httpx.get(srv.url + "/api/info?token=wrong").status_code == 401
        page = httpx.get(srv.url + "/?token=s%C3%A9cret")
        assert page.status_code == 200
        assert httpx.get(srv.url + "/api/status", cookies={"cf_token": page.cookies["cf_token"]}).status_code == 200


def test_an_empty_token_is_refused_by_the_app():
    from cfcli.errors import CfError
    from cfcli.live.server import ServerSettings

    with pytest.raises(CfError, match="empty"):
        ServerSettings("")


# --- a continued clip keeps its rate --------------------------------------------------------------------------------

def test_a_continued_clip_records_at_its_own_rate(tmp_path):
    source = read_video(FIXTURES / "framewise_4step_extend.mkv")
    clip = tmp_path / "30fps.mkv"
    writer = VideoWriter(clip, 30, source.frames.shape[3], source.frames.shape[2], "ffv1")
    writer.write(source.frames[:40])
    writer.close()
    with live_server(FRAMEWISE, tmp_path / "live", max_seconds=0.5) as srv, Client(srv.ws) as c:
        c.send(type="claim")
        upload = httpx.post(f"{srv.url}/api/uploads/clip", content=clip.read_bytes()).json()
        c.send(type="start", prompt=PROMPT, seed=4, record=True, clip=upload["id"])
        rec = c.kind("recording")
    got = read_video(tmp_path / "live" / rec["name"])
    assert got.fps == 30 and got.metadata["fps"] == 30 and got.metadata["motion_fps"] == 16
    assert got.frames.shape[0] == rec["frames"] == 40 + 16 and rec["seconds"] == round(56 / 30, 3)
    assert json.dumps(got.metadata)
