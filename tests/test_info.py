"""`cf info CLIP`: the metadata read back, the stream as ffprobe sees it, and a remake command that really remakes
the clip (bit-exact through FFV1), for generated and extended clips; clips not made by cf; --json."""

import json
import shlex
from pathlib import Path

import torch

from cfcli.pipeline.video import VideoWriter, read_video

from conftest import FIXTURES, PROMPT, info, remake

TINY = FIXTURES / "tiny-framewise.yaml"
BASE = ["--preset", TINY, "--device", "cpu", "--dtype", "float32"]


def test_generated_clip_round_trip(cf, tmp_path):
    out = tmp_path / "fox.mkv"
    r = cf("generate", PROMPT, *BASE, "--frames", 9, "--seed", 21, "--codec", "ffv1", "--height", 64,
           "--prompt-at", "0.3", "the fox sleeps", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    facts = info(cf, out)
    meta, stream = facts["metadata"], facts["stream"]
    assert {k: meta[k] for k in ("seed", "device", "dtype", "codec", "height", "width", "frames", "decoder")} == {
        "seed": 21, "device": "cpu", "dtype": "float32", "codec": "ffv1", "height": 64, "width": 80, "frames": 9,
        "decoder": "wan"}
    assert "crf" not in meta and meta["preset_file"] == str(TINY.resolve())
    assert (stream["codec"], stream["frames"], stream["width"], stream["height"], stream["fps"]) == \
        ("ffv1", 9, 80, 64, 16.0)
    assert "--prompt-at 0.3 'the fox sleeps'" in facts["command"]
    again = remake(cf, facts["command"], tmp_path / "again.mkv")
    assert torch.equal(again, read_video(out).frames)


def test_image_and_crf_are_recorded_and_the_remake_runs_anywhere(cf, tmp_path, monkeypatch):
    """The start picture is recorded by its absolute path: the remake, run from another folder, makes the clip."""
    from PIL import Image

    (tmp_path / "pics").mkdir()
    monkeypatch.chdir(tmp_path / "pics")
    Image.new("RGB", (100, 60), (200, 40, 40)).save("start.png")
    out = tmp_path / "i2v.mp4"
    r = cf("generate", PROMPT, *BASE, "--frames", 5, "--seed", 1, "--image", "start.png", "--crf", 23,
           "--out", out, "-q")
    assert r.exit_code == 0, r.output
    facts = info(cf, out)
    picture = str(tmp_path / "pics" / "start.png")
    assert facts["metadata"]["image"] == picture and facts["metadata"]["crf"] == 23
    assert facts["stream"]["tag"] == "avc1" and f"--image {picture}" in facts["command"] and not facts["notes"]
    monkeypatch.chdir(tmp_path)
    assert torch.equal(remake(cf, facts["command"], tmp_path / "again.mp4"), read_video(out).frames)


def test_a_switch_time_is_given_back_to_the_last_digit(cf, tmp_path):
    """1.0312499 s is frame 16 at 16 fps, in latent frame 4; rounded to 6 digits (1.03125) it would be frame 17, the
    next block: the remake must land the switch where the clip has it."""
    out = tmp_path / "switch.mkv"
    r = cf("generate", PROMPT, *BASE, "--frames", 25, "--seed", 3, "--codec", "ffv1", "--prompt-at", "1.0312499",
           "the fox sleeps", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    facts = info(cf, out)
    assert "--prompt-at 1.0312499 'the fox sleeps'" in facts["command"]
    assert torch.equal(remake(cf, facts["command"], tmp_path / "again.mkv"), read_video(out).frames)


def test_extended_clip_round_trip(cf, tmp_path):
    clip = tmp_path / "clip.mkv"
    assert cf("generate", PROMPT, *BASE, "--frames", 9, "--seed", 5, "--codec", "ffv1", "--out", clip,
              "-q").exit_code == 0
    out = tmp_path / "longer.mkv"
    assert cf("extend", clip, *BASE, "--frames", 4, "--seed", 6, "--codec", "ffv1", "--out", out,
              "-q").exit_code == 0
    facts = info(cf, out)
    assert facts["metadata"]["source_seed"] == 5 and facts["metadata"]["seed"] == 6
    assert facts["command"].startswith(f"cf extend {clip} --prompt ")
    assert "--frames 4" in facts["command"] and "--seed 6" in facts["command"]
    assert torch.equal(remake(cf, facts["command"], tmp_path / "again.mkv"), read_video(out).frames)


def test_clip_not_made_by_cf(cf, tmp_path):
    out = tmp_path / "other.mp4"
    w = VideoWriter(out, 24, 32, 32)
    w.write(torch.zeros(3, 3, 32, 32, dtype=torch.uint8))
    w.close()
    facts = info(cf, out)
    assert facts["metadata"] == {} and facts["command"] is None and facts["stream"]["frames"] == 3
    r = cf("info", out)
    assert r.exit_code == 0 and "no cfcli metadata" in r.stderr and "h264 (avc1) 32×32" in r.stderr
    r = cf("info", tmp_path / "missing.mp4")
    assert r.exit_code == 1 and "file not found" in r.output


def crafted(tmp_path, name: str, meta):
    """A 3-frame clip whose comment tag holds `meta` (any JSON, or raw text)."""
    from cfcli.pipeline.video import rewrite_metadata

    out = tmp_path / name
    w = VideoWriter(out, 16, 32, 32, "ffv1")
    w.write(torch.zeros(3, 3, 32, 32, dtype=torch.uint8))
    w.close()
    if meta is not None:
        import av

        text = meta if isinstance(meta, str) else json.dumps(meta)
        rewrite_metadata(out, {})
        src = out.with_name("src-" + out.name)
        out.rename(src)
        with av.open(str(src)) as i, av.open(str(out), "w") as o:
            o.metadata["comment"] = text
            s = o.add_stream_from_template(i.streams.video[0])
            for packet in i.demux(i.streams.video[0]):
                if packet.dts is not None:
                    packet.stream = s
                    o.mux(packet)
    return out


GOOD = {"prompt": PROMPT, "seed": 3, "preset": "framewise", "frames": 9, "fps": 16, "device": "cpu",
        "dtype": "float32", "decoder": "wan", "height": 48, "width": 80, "codec": "ffv1"}


def test_crafted_metadata_is_shown_and_named_never_a_traceback(cf, tmp_path):
    cases = {
        "no-frames": ({k: v for k, v in GOOD.items() if k != "frames"}, set(), "frames is missing"),
        "numeric-prompt": (GOOD | {"prompt": 42}, {"prompt"}, "prompt is malformed"),
        "bad-extended": (GOOD | {"extended_from": ["x"], "new_frames": "four"}, {"extended_from", "new_frames"},
                         "extended_from is malformed"),
        "types": (GOOD | {"seed": "3", "fps": "fast", "height": -4, "crf": 2.5, "steps": "four",
                          "prompt_schedule": [[1, 2, 3], "x"], "only_new": "yes", "live": 1, "image": None,
                          "preset": {"a": 1}}, {"seed", "fps", "height", "crf", "steps", "prompt_schedule",
                                               "only_new", "live", "image", "preset"}, "seed is malformed"),
        "schedule": (GOOD | {"prompt_schedule": [[0, PROMPT], [float("nan"), "x"]]}, {"prompt_schedule"}, None),
    }
    for name, (meta, bad, no_command) in cases.items():
        clip = crafted(tmp_path, f"{name}.mkv", meta)
        facts = info(cf, clip)
        assert set(facts["malformed"]) == bad, name
        if no_command:
            assert facts["command"] is None and any(no_command in n for n in facts["notes"]), name
        r = cf("info", clip)
        assert r.exit_code == 0, (name, r.output)
        assert sum("malformed: expected" in line for line in r.stderr.splitlines()) == len(bad), name
        assert "Traceback" not in r.output and (no_command is None or "remake:" not in r.stderr)
    # a value that is only malformed for a flag: left out of the command, said so
    facts = info(cf, crafted(tmp_path, "crf.mkv", GOOD | {"crf": "high"}))
    assert "--crf" not in facts["command"] and "not exactly reproducible: crf is malformed, left out" in \
        facts["notes"]
    for text, shown in (("[1, 2]", "not a JSON object"), ("{broken", "not a JSON object"), ("a note", None)):
        clip = crafted(tmp_path, "comment.mkv", text)
        r = cf("info", clip)
        assert r.exit_code == 0 and "Traceback" not in r.output
        assert (shown in r.stderr) if shown else "no cfcli metadata" in r.stderr


def test_a_live_recording_is_remade_exactly(cf, tmp_path):
    """A live run draws its noise for the whole session length (`max_frames`) and is stopped early; the recording says
    so, with what else decides its pixels (device, dtype, size, decoder, codec, the preset file, the start picture
    kept beside it), and `cf info`'s command (`--noise-frames`) makes its frames again, bit for bit."""
    import httpx

    from live_server import Client, live_server

    picture = FIXTURES / "framewise_4step_i2v.png"
    with live_server(TINY, tmp_path / "live", codec="ffv1", max_seconds=4.0) as srv, Client(srv.ws) as c:
        c.send(type="claim")
        recs = []
        for image in (None, httpx.post(f"{srv.url}/api/uploads/image", content=picture.read_bytes()).json()["id"]):
            c.send(type="start", prompt=PROMPT, seed=7, record=True, image=image)
            started = c.kind("started")
            c.until(frames=len(c.frames) + 6)  # this run's first blocks
            c.send(type="stop")
            recs.append(c.kind("recording"))
            c.kind("status", state="idle")
    for rec in recs:
        path = tmp_path / "live" / rec["name"]
        clip = read_video(path)
        assert started["max_frames"] == clip.metadata["max_frames"] > clip.frames.shape[0] == clip.metadata["frames"]
        facts = info(cf, path)
        assert f"--noise-frames {started['max_frames']}" in facts["command"] and not facts["notes"], facts
        again = remake(cf, facts["command"], tmp_path / f"again-{rec['name']}.mkv")
        assert torch.equal(again, clip.frames)
    kept = Path(read_video(tmp_path / "live" / recs[1]["name"]).metadata["image"])
    assert kept.parent == tmp_path / "live" and kept.read_bytes() == picture.read_bytes()  # beside the recording
    plain = shlex.split(info(cf, tmp_path / "live" / recs[0]["name"])["command"])
    i = plain.index("--noise-frames")
    short = remake(cf, shlex.join(plain[:i] + plain[i + 2:]), tmp_path / "short.mkv")
    assert not torch.equal(short, read_video(tmp_path / "live" / recs[0]["name"]).frames)


def test_noise_frames_is_checked_and_recorded(cf, tmp_path):
    out = tmp_path / "n.mkv"
    r = cf("generate", PROMPT, *BASE, "--frames", 9, "--noise-frames", 5, "--out", out)
    assert r.exit_code == 1 and "--noise-frames 5 is shorter than the video (9 frames)" in r.output
    r = cf("generate", PROMPT, *BASE, "--frames", 9, "--noise-frames", 10**6, "--out", out)
    assert r.exit_code == 1 and "longer than the model's position table" in r.output
    r = cf("generate", PROMPT, *BASE, "--frames", 9, "--noise-frames", 33, "--seed", 2, "--codec", "ffv1", "--out",
           out, "-q")
    assert r.exit_code == 0, r.output
    facts = info(cf, out)
    assert facts["metadata"]["noise_frames"] == 33 and "--noise-frames 33" in facts["command"]
    assert torch.equal(remake(cf, facts["command"], tmp_path / "again.mkv"), read_video(out).frames)


CHUNK = FIXTURES / "tiny-chunkwise.yaml"


def test_extend_uses_the_clips_own_preset(cf, tmp_path, monkeypatch):
    """A chunk-wise clip is extended chunk-wise when nothing names a preset (not frame-wise, as before), and said so;
    --mode / --preset / CF_PRESET still choose."""
    clip = tmp_path / "chunk.mkv"
    assert cf("generate", PROMPT, "--preset", CHUNK, "--device", "cpu", "--frames", 9, "--seed", 1, "--codec",
              "ffv1", "--out", clip, "-q").exit_code == 0
    out = tmp_path / "longer.mkv"
    r = cf("extend", clip, "--device", "cpu", "--frames", 12, "--seed", 2, "--codec", "ffv1", "--out", out)
    assert r.exit_code == 0, r.output
    assert f"extending with the clip's own preset, {CHUNK.resolve()}" in r.stderr
    assert read_video(out).metadata["preset"] == "tiny-chunkwise"
    from cfcli.jobs.clip_preset import extend_preset

    assert extend_preset(clip, None, "framewise", None) is None  # --mode chooses
    assert extend_preset(clip, str(TINY), None, None) == str(TINY)
    monkeypatch.setenv("CF_PRESET", str(TINY))
    assert extend_preset(clip, None, None, None) is None  # the environment's preset, through set_up


def test_extend_falls_back_when_the_clips_preset_is_gone(cf, tmp_path):
    from cfcli.jobs.clip_preset import extend_preset
    from cfcli.pipeline.video import rewrite_metadata

    clip = tmp_path / "chunk.mkv"
    assert cf("generate", PROMPT, "--preset", CHUNK, "--device", "cpu", "--frames", 9, "--seed", 1, "--codec",
              "ffv1", "--out", clip, "-q").exit_code == 0
    # its preset file moved away; its name, tiny-chunkwise, is no shipped preset either
    rewrite_metadata(clip, read_video(clip).metadata | {"preset_file": str(tmp_path / "gone.yaml")})
    assert extend_preset(clip, None, None, None) is None
    r = cf("extend", clip, "--device", "cpu", "--frames", 4, "--out", tmp_path / "x.mkv")
    assert "gone.yaml), which no longer exists; extending with the default framewise" in r.stderr
    assert "Traceback" not in r.output
    for meta in ({"preset": "longvideo"}, {"preset": 5}):  # cannot extend; not a name
        assert extend_preset(crafted(tmp_path, "c.mkv", GOOD | meta), None, None, None) is None


def test_a_stopped_clip_is_remade_exactly(cf, tmp_path, monkeypatch):
    """A run stopped after 9 of 33 frames records both; the remake draws the noise of the 33-frame run."""
    from cfcli.pipeline.sampler import CausalSampler

    denoise = CausalSampler.denoise_block

    def interrupt(self, *a, **k):
        if self.blocks_done == 3:
            raise KeyboardInterrupt
        return denoise(self, *a, **k)

    out = tmp_path / "stopped.mkv"
    with monkeypatch.context() as m:
        m.setattr(CausalSampler, "denoise_block", interrupt)
        r = cf("generate", PROMPT, *BASE, "--frames", 33, "--seed", 8, "--codec", "ffv1", "--out", out, "-q")
    assert r.exit_code == 130
    facts = info(cf, out)
    assert (facts["metadata"]["frames"], facts["metadata"]["planned_frames"]) == (9, 33)
    assert "--frames 9 --noise-frames 33" in facts["command"]
    assert torch.equal(remake(cf, facts["command"], tmp_path / "again.mkv"), read_video(out).frames)
