"""`cf live`: the live schedule, the documented API against the real server (uvicorn on 127.0.0.1, tiny presets on
CPU), the token, refused messages and uploads, and the latency measurement."""

import logging
import threading
import time

import httpx
import pytest
import torch

from cfcli.live.protocol import BadMessage, parse
from cfcli.live.schedule import LivePrompt, LiveSchedule
from cfcli.models.build import model_configs
from cfcli.pipeline.video import read_video

from conftest import FIXTURES, PROMPT
from live_server import Client, free_port, live_server

FRAMEWISE = FIXTURES / "tiny-framewise.yaml"
WAN = model_configs({}).geometry  # the released models' strides
JUMP = "the fox jumps into the river"


# --- the live schedule ----------------------------------------------------------------------------------------------

def test_a_prompt_lands_at_the_first_block_not_yet_started():
    changes = []
    opening = LivePrompt(0, "a", 0.0, kv=torch.zeros(1))
    s = LiveSchedule(opening, 0, WAN.first_frame_of, on_change=changes.append)
    assert s.at(0).item() == 0 and s.at(1).item() == 0
    s.submit(LivePrompt(1, "b", 0.0, kv=torch.ones(1)))
    s.submit(LivePrompt(2, "c", 0.0, kv=torch.full((1,), 2.0)))  # within one block: the later prompt wins
    assert s.at(1).item() == 0  # block 1 already started: a repeated lookup keeps its prompt
    assert s.at(2).item() == 2 and s.at(3).item() == 2
    assert [(p.id, p.state) for p in changes] == [(1, "superseded"), (2, "landed")]
    assert (changes[1].latent, changes[1].frame) == (2, 5)  # latent 2 makes frames 5…8
    assert changes[1].block == 2 and changes[1].as_message(16)["block"] == 2  # frame-wise: a block per latent frame
    assert s.frames_written(5) == [] and [p.id for p in s.frames_written(6)] == [2]
    assert s.as_metadata(16) == [[0.0, "a"], [0.3125, "c"]]
    s.submit(LivePrompt(3, "d", 0.0, kv=torch.ones(1)))
    assert s.drop_pending().state == "dropped" and s.at(4).item() == 2 and s.drop_pending() is None


def test_the_block_a_prompt_lands_at_counts_blocks_of_latent_frames():
    s = LiveSchedule(LivePrompt(0, "a", 0.0, kv=torch.zeros(1)), 0, WAN.first_frame_of, block_frames=3)
    s.at(0)
    s.submit(LivePrompt(1, "b", 0.0, kv=torch.ones(1)))
    s.at(3)
    assert [(p.latent, p.block, p.frame) for p in s.entries] == [(0, 0, 0), (3, 1, 9)]  # chunk-wise: 3 per block


@pytest.mark.parametrize("raw, message", [
    ("{", "not JSON"), ('"start"', "unknown message type"), ('{"type": "launch"}', "unknown message type"),
    ('{"type": "start"}', "'prompt' is required"), ('{"type": "start", "prompt": 3}', "wrong type"),
    ('{"type": "start", "prompt": "a", "path": "/etc"}', "unknown field"), ('{"type": "prompt", "prompt": " "}',
                                                                             "1-2000 characters"),
    ('{"type": "record", "on": 1}', "wrong type"), ('{"type": "restart", "seed": -1}', "seed must be"),
    (b"\x00", "not binary"), ("x" * 20000, "over"),
    ('{"type": "prepare", "prompts": []}', "give 1-64 prompts"), ('{"type": "prepare", "prompts": [3]}',
                                                                   "a list of strings"),
    ('{"type": "prepare", "prompts": ["a", " "]}', "prepare: the prompt must be 1-2000"),
    ('{"type": "prepare", "prompts": "a"}', "wrong type"), ('{"type": "prepare", "prompts": ["a"] }'.replace(
        '["a"]', '["a"' + ', "b"' * 64 + ']'), "give 1-64 prompts"),
])
def test_bad_messages_are_refused_with_a_reason(raw, message):
    with pytest.raises(BadMessage, match=message):
        parse(raw)


def test_messages_get_defaults():
    assert parse('{"type": "start", "prompt": "a fox"}') == {"type": "start", "prompt": "a fox", "seed": None,
                                                              "image": None, "clip": None, "record": None}


# --- through the real server ----------------------------------------------------------------------------------------

def download(url: str, path):
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200, r.text
    path.write_bytes(r.content)
    return read_video(path)


def test_a_switch_lands_on_the_stated_block_and_equals_prompt_at(cf, tmp_path):
    with live_server(FRAMEWISE, tmp_path / "live", codec="ffv1", max_seconds=1.25) as srv, Client(srv.ws) as c, \
            Client(srv.ws) as viewer:
        welcome = c.kind("welcome")
        assert welcome["fps"] == 16 and welcome["max_prepare"] == 64  # the page splits its queue by it
        c.send(type="claim")
        assert c.kind("role")["role"] == "controller"
        c.send(type="start", prompt=PROMPT, seed=5, record=True)
        c.until(frames=1)  # frames arrive while the video is generated
        c.send(type="prompt", prompt=JUMP)
        assert c.kind("prompt")["state"] == "submitted"  # the controller's own reply comes first
        landed = c.kind("prompt", state="landed")
        shown = c.kind("prompt", state="shown")
        assert c.kind("ended")["reason"] == "limit"
        rec = c.kind("recording")
        clip = download(srv.url + rec["url"], tmp_path / "live.mkv")
        viewer.until(frames=21)  # a second socket watches the same frames
        assert viewer.kind("recording")["name"] == rec["name"]
    assert [f["frame"] for f in viewer.frames] == list(range(21))
    assert any(m["type"] == "prompt" and m["state"] == "landed" for m in viewer.messages)
    assert 1 <= landed["latent"] <= 5 and landed["frame"] == WAN.first_frame_of(landed["latent"])
    assert landed["block"] == landed["latent"]  # frame-wise: one latent frame per block
    assert shown["made_s"] > 0
    assert [f["frame"] for f in c.frames] == list(range(21)) == list(range(rec["frames"]))
    ref = tmp_path / "ref.mkv"
    # it lands between the denoising steps of the block in flight (step ≥ 1) or, if none is, at the next block start
    at = f"{landed['seconds']}@{landed['step']}" if landed["step"] else str(landed["seconds"])
    r = cf("generate", PROMPT, "--preset", FRAMEWISE, "--seed", 5, "--frames", 21, "--device", "cpu", "--dtype",
           "float32", "--codec", "ffv1", "--out", ref, "--prompt-at", at, JUMP)
    assert r.exit_code == 0, r.output
    assert torch.equal(clip.frames, read_video(ref).frames)  # bit for bit, the switch included
    assert clip.metadata["prompt_schedule"] == [[0.0, PROMPT], [landed["seconds"], JUMP]
                                                + ([{"step": landed["step"]}] if landed["step"] else [])]
    assert clip.metadata["seed"] == 5 and clip.metadata["frames"] == 21


def test_stop_keeps_a_playable_mp4_of_every_streamed_frame(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cfcli.live")
    with live_server(FRAMEWISE, tmp_path / "live", codec="h264", max_seconds=4.0) as srv, Client(srv.ws) as c:
        c.send(type="claim")
        c.send(type="start", prompt=PROMPT, seed=3, record=True)
        assert c.kind("ack", **{"for": "start"})["state"] == "received"
        started = c.kind("started")
        c.until(frames=2)
        c.send(type="record", on=True)
        applied = c.kind("ack", **{"for": "record", "state": "applied"})
        c.send(type="stop")
        assert c.kind("ack", **{"for": "stop"})["state"] == "received"
        ended = c.kind("ended")
        rec = c.kind("recording")
        streamed = len(c.frames)
        clip = download(srv.url + rec["url"], tmp_path / "live.mp4")
        assert c.kind("status", state="idle")
        assert httpx.get(srv.url + "/recordings/..%2Fsecret.mp4").status_code == 404
        c.send(type="restart", seed=9)  # the same prompt, another seed
        assert c.kind("started")["seed"] == 9
        c.until(frames=len(c.frames) + 1)
    assert ended["reason"] == "stopped" and 2 <= ended["frames"] < 65
    assert started["block"] == 0 and applied["on"] is True and 2 <= applied["frame"] <= ended["frames"]
    assert ended["frames"] == 1 + 4 * ended["block"]  # frame-wise: the last block made is the last one streamed
    assert rec["name"].endswith(".mp4") and clip.frames.shape[0] == rec["frames"] == ended["frames"] == streamed
    assert clip.metadata["prompt"] == PROMPT and clip.metadata["live"] is True
    lines = [r.getMessage() for r in caplog.records if r.name == "cfcli.live"]
    path = tmp_path / "live" / rec["name"]
    assert lines[:3] == [f"live: started {PROMPT!r} seed 3", f"live: stopped after {ended['frames'] / 16:.1f} s",
                         f"live: saved recording {path} ({rec['frames'] / 16:.1f} s)"]  # what the terminal shows
    assert lines[3] == f"live: started {PROMPT!r} seed 9"
    saved = sorted(p.name for p in (tmp_path / "live").iterdir())
    assert len(saved) == 2 and rec["name"] in saved and not any(".partial" in n for n in saved)
    # the server shut down mid-video (as on Ctrl-C): that recording was closed and kept, and it plays
    second = read_video(tmp_path / "live" / next(n for n in saved if n != rec["name"]))
    assert second.metadata["seed"] == 9 and second.frames.shape[0] == second.metadata["frames"] >= 1


def test_bad_requests_get_errors_and_the_server_survives(tmp_path):
    with live_server(FRAMEWISE, tmp_path / "live", max_upload_bytes=4096) as srv, Client(srv.ws) as a, \
            Client(srv.ws) as b:
        a.send(type="claim")
        a.kind("role")
        b.send(type="claim")
        assert "another client controls" in b.kind("error")["message"]
        b.send(type="stop")
        assert "only watches" in b.kind("error")["message"]
        for raw in ("nonsense", '{"type": "start", "prompt": "a", "path": "/etc/passwd"}', b"\x01\x02"):
            a.ws.send(raw)
            assert a.kind("error")
        a.send(type="prompt", prompt="b")
        assert "nothing is running" in a.kind("error")["message"]
        a.send(type="start", prompt=PROMPT, image="image-0000")
        assert "no image upload" in a.kind("error")["message"]
        a.send(type="restart")
        assert "nothing to restart" in a.kind("error")["message"]
        r = httpx.post(srv.url + "/api/uploads/image", content=b"not a picture")
        assert r.status_code == 415 and "could not read image" in r.json()["message"] and "PNG" in r.json()["hint"]
        assert httpx.post(srv.url + "/api/uploads/clip", content=b"\x00" * 100).status_code == 415
        assert httpx.post(srv.url + "/api/uploads/image", content=b"\x00" * 5000).status_code == 413
        png = (FIXTURES / "framewise_4step_i2v.png").read_bytes()
        if len(png) <= 4096:
            assert httpx.post(srv.url + "/api/uploads/image", content=png).json()["kind"] == "image"
        assert httpx.get(srv.url + "/api/status").json()["state"] == "idle"
        a.send(type="status")
        assert a.kind("status")["state"] == "idle"
        assert httpx.get(srv.url + "/", headers={"Host": "evil.example:80"}).status_code == 403  # DNS rebinding
    assert threading.active_count() >= 1


def test_the_token_is_required_off_localhost(tmp_path):
    from websockets.exceptions import InvalidStatus

    with live_server(FRAMEWISE, tmp_path / "live", token="s3cret", host="0.0.0.0") as srv:
        assert httpx.get(srv.url + "/api/info").status_code == 401
        assert httpx.get(srv.url + "/api/info?token=wrong").status_code == 401
        assert httpx.get(srv.url + "/api/info?token=s3cret").json()["auth"] is True
        assert httpx.get(srv.url + "/api/status", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        page = httpx.get(srv.url + "/?token=s3cret")
        assert page.status_code == 200 and page.cookies["cf_token"] == "s3cret"
        assert httpx.get(srv.url + "/static/live.js", cookies={"cf_token": "s3cret"}).status_code == 200
        with pytest.raises(InvalidStatus):
            Client(srv.ws)
        with pytest.raises(InvalidStatus):
            Client(srv.ws, origin="http://evil.example", additional_headers={"X-CF-Token": "s3cret"})
        with Client(srv.ws + "?token=s3cret") as c:
            assert c.kind("welcome")["auth"] is True


def test_cf_live_makes_a_token_for_a_public_host(cf, monkeypatch):
    served, port, live_log = {}, free_port(), logging.getLogger("cfcli.live")
    monkeypatch.setattr("cfcli.live.server.serve", lambda app, sock: served.update(
        address=sock.getsockname(), log=list(live_log.handlers), level=live_log.level) or 0)
    r = cf("live", "--preset", FRAMEWISE, "--device", "cpu", "--host", "0.0.0.0", "--port", port)
    assert r.exit_code == 0, r.output
    assert len(served["log"]) == 1 and served["level"] == logging.INFO  # the live log on the terminal while serving
    assert live_log.handlers == []  # and taken off after
    assert "?token=" in r.output and "umT5 stays loaded on cpu" in r.output
    assert served["address"] == ("0.0.0.0", port)


@pytest.mark.parametrize("args, phrase", [(["--crf", 99], "--crf 99 is out of range"),
                                          (["--seed", -5], "--seed -5 is out of range"),
                                          (["--max-seconds", "nan"], "--max-seconds must be a positive number"),
                                          (["--codec", "xyz"], "unknown codec 'xyz'")])
def test_cf_live_refuses_bad_values_before_loading(cf, monkeypatch, args, phrase):
    monkeypatch.setattr("cfcli.cli.live.load", lambda *a, **k: pytest.fail("models loaded for a bad value"))
    r = cf("live", "--preset", FRAMEWISE, "--device", "cpu", *args)
    assert r.exit_code == 1 and phrase in r.output and "Traceback" not in r.output, r.output


def test_a_cut_typed_while_the_generator_waits_lands_at_the_waiting_blocks_second_step(tmp_path, monkeypatch):
    """Ahead of playback (here: once 5 frames are out, until a prompt waits), the generator waits after a block's
    first step (`LiveSession._idle`), not before it: a cut typed then lands at that block's step 1. The time waited
    is not generation time (the status's speed)."""
    from cfcli.cli.live import load
    from cfcli.live.measure import Collect
    from cfcli.live.session import LiveConfig, LiveSession, StartRequest
    from cfcli.session import Session

    engine, encoder = load(Session(str(FRAMEWISE), device="cpu", dtype="float32"), 30.0, None)
    events, idling = Collect(), threading.Event()
    session = LiveSession(engine, encoder, LiveConfig(tmp_path / "live", max_seconds=30.0), events)
    monkeypatch.setattr(session, "_should_wait", lambda stats, schedule: stats.frames >= 5 and not (
        schedule.has_pending or session._stop.is_set()))
    idle = session._idle

    def watched(stats, schedule):
        if stats.frames >= 5:
            idling.set()
        return idle(stats, schedule)

    monkeypatch.setattr(session, "_idle", watched)
    session.begin()
    try:
        session.start(StartRequest(PROMPT, 5))
        assert idling.wait(60)
        time.sleep(0.3)
        p = session.prompt(JUMP)[0]
        assert events.wait(lambda: p.state == "shown")
        stats, started = session.stats, session.stats.started
    finally:
        session.stop()
        session.shutdown()
    assert p.step == 1 and p.state == "shown"
    assert stats.idle_s >= 0.3 and stats.busy_s + stats.idle_s <= time.perf_counter() - started


def test_latency_measurement_runs_on_cpu(tmp_path):
    from cfcli.cli.live import load
    from cfcli.live.measure import measure
    from cfcli.live.session import LiveConfig

    from cfcli.session import Session

    engine, encoder = load(Session(str(FRAMEWISE), device="cpu", dtype="float32"), None, None)
    out = measure(engine, encoder, LiveConfig(tmp_path), switches=1, seed=1, blocks=2)
    assert out["switches"] == 1 and out["latency_s"]["p50"] == out["latency_s"]["max"] > 0
    assert out["block_s"] > 0 and out["decode_s"] > 0 and out["frames_per_s"] > 0 and out["text_device"] == "cpu"
    assert "lora_swaps" not in out  # no --lora given
    (d,) = out["switch_detail"]  # where the time went: encoded, landed (at a block or a step), first frame made
    assert 0 < d["encoded_s"] <= d["landed_s"] <= d["made_s"] == out["latency_s"]["p50"] and d["step"] >= 0


def test_start_from_a_picture_or_a_clip_equals_generate_and_extend(cf, tmp_path):
    picture, clip = FIXTURES / "framewise_4step_i2v.png", FIXTURES / "framewise_4step_extend.mkv"
    got = {}
    with live_server(FRAMEWISE, tmp_path / "live", codec="ffv1", max_seconds=0.5) as srv, Client(srv.ws) as c:
        c.send(type="claim")
        for kind, path in (("image", picture), ("clip", clip)):
            upload = httpx.post(f"{srv.url}/api/uploads/{kind}", content=path.read_bytes()).json()
            c.send(type="start", prompt=PROMPT, seed=4, record=True, **{kind: upload["id"]})
            rec = c.kind("recording")
            got[kind] = download(srv.url + rec["url"], tmp_path / f"{kind}.mkv")
            c.kind("status", state="idle")
    common = ["--preset", FRAMEWISE, "--seed", 4, "--device", "cpu", "--dtype", "float32", "--codec", "ffv1"]
    r = cf("generate", PROMPT, "--image", picture, "--frames", 9, "--out", tmp_path / "g.mkv", *common)
    assert r.exit_code == 0, r.output
    r = cf("extend", clip, "--prompt", PROMPT, "--frames", 8, "--out", tmp_path / "e.mkv", *common)
    assert r.exit_code == 0, r.output
    assert torch.equal(got["image"].frames, read_video(tmp_path / "g.mkv").frames)  # 9 frames, the picture first
    assert torch.equal(got["clip"].frames, read_video(tmp_path / "e.mkv").frames)  # the clip's 81, then 8 new
    assert got["clip"].metadata["context_frames"] == 17


def test_warm_up_runs_the_prompt_threads_first_cuda_work(tmp_path, monkeypatch):
    """The first switch must not pay for the text and blend threads' first calls: the warm-up runs umT5 (past the
    prompt cache) on the text thread and makes a K/V on each."""
    import threading

    from cfcli.cli.live import load
    from cfcli.live.measure import Collect
    from cfcli.live.session import LiveConfig, LiveSession
    from cfcli.session import Session

    engine, encoder = load(Session(str(FRAMEWISE), device="cpu", dtype="float32"), None, None)
    features = encoder.encode(["warm-up"])[0]  # as `warm_up` does: the text thread then reads it from the cache
    ran, made, read = [], [], []
    real_run, real_kv = encoder._run_encoder, engine.text_kv
    monkeypatch.setattr(encoder, "_run_encoder", lambda p: ran.append(threading.current_thread().name) or real_run(p))
    monkeypatch.setattr(engine, "text_kv", lambda f: made.append(threading.current_thread().name) or real_kv(f))
    real_cached = encoder._cached
    monkeypatch.setattr(encoder, "_cached", lambda k: read.append(threading.current_thread().name) or real_cached(k))
    session = LiveSession(engine, encoder, LiveConfig(tmp_path), Collect())
    session.begin()
    try:
        session.warm_threads(features)
    finally:
        session.shutdown()
    assert [n.split("_")[0] for n in ran] == ["cf-live-text"]  # the prompt cache did not answer for it
    assert [n.split("_")[0] for n in read] == ["cf-live-text"]  # then it did
    assert sorted(n.split("_")[0] for n in made) == ["cf-live-blend", "cf-live-text"]


def test_switches_land_at_block_starts_when_asked(tmp_path):
    """`cf live --switch-at blocks`: every cut lands at a block's start, and the loop is not held near the GPU."""
    from cfcli.cli.live import load
    from cfcli.live.measure import measure
    from cfcli.live.session import LiveConfig
    from cfcli.session import Session

    engine, encoder = load(Session(str(FRAMEWISE), device="cpu", dtype="float32"), None, None)
    calls = []
    generate = engine.generate
    engine.generate = lambda *a, **k: calls.append(k.get("step_sync")) or generate(*a, **k)
    out = measure(engine, encoder, LiveConfig(tmp_path, switch_at="blocks"), switches=3, seed=2, blocks=2)
    assert [d["step"] for d in out["switch_detail"]] == [0, 0, 0] and out["switches"] == 3
    assert False in calls and True not in calls  # the live run's generate: no step sync


def test_prepared_prompts_are_encoded_ahead_and_a_fired_prompt_waits_for_at_most_one(tmp_path, monkeypatch):
    """`prepare` (the page's queue): each prompt is encoded into the prompt cache and acknowledged (received, then
    applied with `cached`); firing a prepared prompt runs no umT5; a prompt fired while a list is being prepared is
    encoded after at most one of the list, not behind all of it."""
    import time

    from cfcli.pipeline.text import PromptEncoder

    ran = []
    real = PromptEncoder._run_encoder

    def slow(self, prompts):
        time.sleep(0.3)
        ran.append(prompts[0])
        return real(self, prompts)

    monkeypatch.setattr(PromptEncoder, "_run_encoder", slow)
    later = [f"prepared prompt {i}" for i in range(4)]
    with live_server(FRAMEWISE, tmp_path / "live", max_seconds=3.0) as srv, Client(srv.ws) as c:
        c.send(type="prepare", prompts=[JUMP])
        assert "only watches" in c.kind("error")["message"]  # a control message: the controller's
        c.send(type="claim")
        c.send(type="prepare", prompts=[JUMP, f" {JUMP} "])  # the same prompt once
        assert c.kind("ack", **{"for": "prepare", "state": "received"})["prompts"] == 1
        done = c.kind("ack", **{"for": "prepare", "state": "applied"})
        assert done["prompt"] == JUMP and done["cached"] is True and srv.session.encoder.is_cached(JUMP)
        c.send(type="start", prompt=PROMPT, seed=3, record=False)
        c.until(frames=1)
        c.send(type="prompt", prompt=JUMP)  # prepared: lands without umT5
        assert c.kind("prompt", state="landed")["prompt"] == JUMP
        c.send(type="prepare", prompts=later)
        c.kind("ack", **{"for": "prepare", "state": "received"})
        c.send(type="prompt", prompt="a red kite over green hills")
        kite = c.kind("prompt", state="landed")
        applied = lambda m: m["type"] == "ack" and m["for"] == "prepare" and m["state"] == "applied"
        while sum(map(applied, c.messages)) < 1 + len(later):
            c.until(applied)
    assert ran.count(JUMP) == 1 and kite["prompt"] == "a red kite over green hills"
    fired = ran.index("a red kite over green hills")
    assert ran[fired - 1] in (later[0], PROMPT) and ran[fired + 1:] == later[ran[:fired].count(later[0]):]


def test_prepare_says_when_the_cache_cannot_keep_a_prompt_and_outlives_a_failed_encoding(tmp_path):
    """An unwritable prompt cache (here a file where its folder should be): the prompt is encoded, the ack says
    `cached: false`. A prompt whose encoding fails gets an `error`, and the prompts after it are still prepared."""
    from concurrent.futures import ThreadPoolExecutor

    from cfcli.cli.live import load
    from cfcli.live.prepare import Prepared
    from cfcli.session import Session

    _, encoder = load(Session(str(FRAMEWISE), device="cpu", dtype="float32"), None, None)
    encoder.cache_dir = tmp_path / "not-a-folder"
    encoder.cache_dir.write_text("")
    thread, said = ThreadPoolExecutor(1), []

    def encode(text: str) -> bool:
        if text == "fails":
            raise RuntimeError("out of memory\nand more")
        encoder.encode([text])
        return encoder.is_cached(text)

    two = threading.Semaphore(0)
    prepared = Prepared(thread, encode, lambda m: said.append(m) or two.release())
    assert prepared.add(["fails", JUMP]) == {"type": "ack", "for": "prepare", "state": "received", "prompts": 2}
    assert two.acquire(timeout=60) and two.acquire(timeout=60)
    thread.shutdown(wait=True)
    assert said == [{"type": "error", "message": "could not prepare the prompt: out of memory"},
                    {"type": "ack", "for": "prepare", "state": "applied", "prompt": JUMP, "cached": False}]
