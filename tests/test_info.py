"""`cf info CLIP`: the metadata read back, the stream as ffprobe sees it, and a remake command that really remakes
the clip (bit-exact through FFV1), for generated and extended clips; clips not made by cf; --json."""

import json
import shlex

import torch

from cfcli.pipeline.video import VideoWriter, read_video

from conftest import FIXTURES, PROMPT

TINY = FIXTURES / "tiny-framewise.yaml"
BASE = ["--preset", TINY, "--device", "cpu", "--dtype", "float32"]


def info(cf, path) -> dict:
    r = cf("info", path, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def remake(cf, command: str, out):
    argv = shlex.split(command)
    assert argv[0] == "cf"
    r = cf(*argv[1:], "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    return read_video(out).frames


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


def test_image_and_crf_are_recorded(cf, tmp_path):
    from PIL import Image

    Image.new("RGB", (100, 60), (200, 40, 40)).save(tmp_path / "start.png")
    out = tmp_path / "i2v.mp4"
    r = cf("generate", PROMPT, *BASE, "--frames", 5, "--seed", 1, "--image", tmp_path / "start.png", "--crf", 23,
           "--out", out, "-q")
    assert r.exit_code == 0, r.output
    facts = info(cf, out)
    assert facts["metadata"]["image"] == "start.png" and facts["metadata"]["crf"] == 23
    assert facts["stream"]["tag"] == "avc1" and "--image start.png" in facts["command"]


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
