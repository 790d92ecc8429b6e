"""`cf extend`: continue clips written by `cf generate` or anything PyAV decodes; clear errors otherwise."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cfcli.pipeline.video import read_video

from conftest import FIXTURES, PROMPT, rel_err

TINY = FIXTURES / "tiny-framewise.yaml"
BASE = ["--preset", TINY, "--device", "cpu", "--dtype", "float32"]


@pytest.fixture
def clip(cf, tmp_path):
    out = tmp_path / "clip.mkv"
    r = cf("generate", *BASE, PROMPT, "--frames", 21, "--seed", 4, "--out", out, "--codec", "ffv1", "--fps", 12)
    assert r.exit_code == 0, r.output
    return out


def test_extend_a_generated_clip_reads_the_prompt_back(cf, clip, tmp_path):
    out = tmp_path / "longer.mkv"
    r = cf("extend", clip, *BASE, "--frames", 16, "--seed", 5, "--out", out, "--codec", "ffv1")
    assert r.exit_code == 0, r.output
    original, result = read_video(clip), read_video(out)
    assert result.frames.shape[0] == 21 + 16 and result.fps == 12
    assert torch.equal(result.frames[:21], original.frames)  # ffv1: the original frames come back bit-exact
    assert result.metadata["prompt"] == PROMPT and result.metadata["extended_from"] == str(clip)
    assert result.metadata["fps"] == 12 and result.metadata["frames"] == 37


def test_only_new_and_seconds(cf, clip, tmp_path):
    out = tmp_path / "new.mp4"
    r = cf("extend", clip, *BASE, "--seconds", 1, "--only-new", "--seed", 5, "--out", out)
    assert r.exit_code == 0, r.output
    assert read_video(out).frames.shape[0] == 12  # 1 s at the clip's 12 fps


def test_context_from_a_file_equals_priming_with_encoded_frames(cf, clip, tmp_path):
    """The clip path (read, encode, prime) gives the latents of the sampler primed directly."""
    from cfcli.pipeline.engine import Engine
    from cfcli.pipeline.media import to_model_range
    from cfcli.pipeline.text import PromptEncoder
    from cfcli.presets import load_preset

    r = cf("extend", clip, *BASE, "--frames", 8, "--context-frames", 9, "--seed", 6, "--only-new", "--out",
           tmp_path / "n.mkv", "--codec", "ffv1", "--save-latents", tmp_path / "l.st")
    assert r.exit_code == 0, r.output
    preset = load_preset(TINY)
    engine = Engine.load(preset)
    context = engine.encode_video(to_model_range(read_video(clip).frames[-9:]).permute(1, 0, 2, 3))
    text = engine.text_kv(PromptEncoder(preset, torch.device("cpu"), torch.float32).encode([PROMPT])[0])
    direct = torch.cat([c.latents for c in engine.generate(text, 2, 6, context, decode=False)])
    got = load_file(str(tmp_path / "l.st"))["latents"]
    assert got.shape == (5, 16, 6, 10)
    assert rel_err(got, direct) < 1e-6


def test_rolling_past_the_horizon_keeps_the_cache_size(cf, clip, tmp_path, monkeypatch):
    from cfcli.pipeline.engine import Engine

    caches = []
    new_cache = Engine.new_cache
    monkeypatch.setattr(Engine, "new_cache", lambda self, n: caches.append(new_cache(self, n)) or caches[-1])
    rolling = FIXTURES / "tiny-framewise-rolling.yaml"
    r = cf("extend", clip, "--preset", rolling, "--device", "cpu", "--frames", 40, "--seed", 1, "--out",
           tmp_path / "r.mp4")
    assert r.exit_code == 0, r.output
    cache = caches[0]
    assert cache.capacity == 6 * cache.frame_tokens and cache.kv.shape[3] == cache.capacity
    assert cache.frames == 6 and cache.global_end == (5 + 10) * cache.frame_tokens


def test_resizing_a_clip_of_another_aspect_is_said(cf, tmp_path):
    import av

    path = tmp_path / "square.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(24))
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        for i in range(9):
            img = np.full((64, 64, 3), i * 20, dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    r = cf("extend", path, *BASE, "--prompt", "grey", "--frames", 4, "--seed", 1, "--out", tmp_path / "o.mp4")
    assert r.exit_code == 0, r.output
    assert "crops and resizes" in r.output
    result = read_video(tmp_path / "o.mp4")
    assert result.frames.shape == (13, 3, 48, 80) and result.fps == 24


def _no_output(tmp_path):
    return not (tmp_path / "x.mp4").exists()


def test_missing_clip(cf, tmp_path):
    r = cf("extend", tmp_path / "nope.mp4", *BASE, "--prompt", "p", "--out", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "clip not found" in r.output and _no_output(tmp_path)


def test_not_a_video(cf, tmp_path):
    (tmp_path / "notes.mp4").write_text("hello")
    r = cf("extend", tmp_path / "notes.mp4", *BASE, "--prompt", "p", "--out", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "cannot read" in r.output and "Traceback" not in r.output and _no_output(tmp_path)


def test_no_video_stream(cf, tmp_path):
    import av

    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
    r = cf("extend", path, *BASE, "--prompt", "p", "--out", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "no video stream" in r.output and _no_output(tmp_path)


def test_clip_without_frames(cf, tmp_path):
    path = tmp_path / "empty.mkv"
    path.write_bytes((FIXTURES / "framewise_4step_extend.mkv").read_bytes()[:1000])  # headers, no whole frame
    r = cf("extend", path, *BASE, "--prompt", "p", "--out", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "no frames" in r.output and _no_output(tmp_path)


def test_context_longer_than_the_clip(cf, clip, tmp_path):
    r = cf("extend", clip, *BASE, "--context-frames", 25, "--out", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "more than the clip's 21 frames" in r.output and _no_output(tmp_path)


def test_context_not_on_the_vae_grid(cf, clip, tmp_path):
    r = cf("extend", clip, *BASE, "--context-frames", 8, "--out", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "1 + 4k" in r.output and _no_output(tmp_path)


def test_clip_without_prompt_needs_one(cf, tmp_path):
    r = cf("extend", FIXTURES / "framewise_4step_extend.mkv", *BASE, "--out", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "--prompt" in r.output and _no_output(tmp_path)


def test_ntsc_rate_is_kept(cf, tmp_path):
    import av

    path = tmp_path / "ntsc.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(30000, 1001))
        s.width, s.height, s.pix_fmt = 80, 48, "yuv420p"
        for i in range(9):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((48, 80, 3), 40 * (i % 5), np.uint8), "rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    r = cf("extend", path, *BASE, "--prompt", "grey", "--frames", 4, "--seed", 1, "--out", tmp_path / "o.mp4")
    assert r.exit_code == 0, r.output
    assert read_video(tmp_path / "o.mp4").fps == pytest.approx(30000 / 1001, rel=1e-4)
