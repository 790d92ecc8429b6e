"""`cf generate` as creators use it: files, metadata, streaming, Ctrl-C, prompt cache and clean errors."""

import json
import time
from pathlib import Path

import pytest
import torch

from cfcli.pipeline.video import read_video

from conftest import FIXTURES, PROMPT

TINY = FIXTURES / "tiny-framewise.yaml"
BASE = ["--preset", TINY, "--device", "cpu", "--dtype", "float32"]


def gen(cf, *args):
    return cf("generate", *BASE, *args)


def test_h264_mp4_with_metadata_and_json_summary(cf, tmp_path):
    out = tmp_path / "fox.mp4"
    r = gen(cf, PROMPT, "--frames", 17, "--seed", 7, "--out", out, "--json", "--quiet")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["frames"] == 17 and summary["seed"] == 7 and summary["path"] == str(out)
    clip = read_video(out)
    assert clip.frames.shape == (17, 3, 48, 80) and clip.fps == 16
    assert clip.metadata["prompt"] == PROMPT and clip.metadata["seed"] == 7
    assert clip.metadata["preset"] == "tiny-framewise" and clip.metadata["steps"] == [1000, 750, 500, 250]
    assert "cfcli" in clip.metadata


def test_default_path_random_seed_and_no_overwrite(cf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = gen(cf, PROMPT, "--frames", 5, "--seed", 3)
    assert r.exit_code == 0, r.output
    out = Path("outputs") / "a-fox-running-through-a-snowy-forest-at-dawn-3.mp4"
    assert out.is_file()
    before = out.stat().st_mtime_ns
    r = gen(cf, PROMPT, "--frames", 5, "--seed", 3)
    assert r.exit_code == 1 and "already exists" in r.output and "--overwrite" in r.output
    assert out.stat().st_mtime_ns == before
    assert gen(cf, PROMPT, "--frames", 5, "--seed", 3, "--overwrite").exit_code == 0
    r = gen(cf, PROMPT, "--frames", 5)
    assert r.exit_code == 0 and "seed" in r.output
    assert len(list(Path("outputs").glob("*.mp4"))) == 2


def test_frames_and_seconds_are_rounded_up_and_said(cf, tmp_path):
    r = gen(cf, PROMPT, "--frames", 10, "--seed", 1, "--out", tmp_path / "a.mp4")
    assert r.exit_code == 0 and "generating 13" in r.output
    assert read_video(tmp_path / "a.mp4").frames.shape[0] == 13
    r = gen(cf, PROMPT, "--seconds", 1, "--fps", 8, "--seed", 1, "--out", tmp_path / "b.mp4")
    assert r.exit_code == 0, r.output
    clip = read_video(tmp_path / "b.mp4")
    assert clip.frames.shape[0] == 9 and clip.fps == 8


def test_chunkwise_rounds_to_whole_chunks(cf, tmp_path):
    r = cf("generate", PROMPT, "--preset", FIXTURES / "tiny-chunkwise.yaml", "--device", "cpu", "--frames", 5,
           "--seed", 1, "--out", tmp_path / "c.mp4")
    assert r.exit_code == 0 and "generating 9" in r.output
    assert read_video(tmp_path / "c.mp4").frames.shape[0] == 9


def test_frames_reach_the_file_while_later_blocks_are_generated(cf, tmp_path, monkeypatch):
    from cfcli.pipeline.sampler import CausalSampler
    from cfcli.pipeline.video import VideoWriter

    events = []
    denoise, write = CausalSampler.denoise_block, VideoWriter.write

    def logged_denoise(self, *a, **k):
        events.append("denoise")
        return denoise(self, *a, **k)

    def logged_write(self, frames):
        events.append("write")
        write(self, frames)

    monkeypatch.setattr(CausalSampler, "denoise_block", logged_denoise)
    monkeypatch.setattr(VideoWriter, "write", logged_write)
    r = gen(cf, PROMPT, "--frames", 21, "--seed", 1, "--out", tmp_path / "s.mkv", "--codec", "ffv1")
    assert r.exit_code == 0, r.output
    # Block n is handed to the writer (a thread of its own) as soon as block n + 1 is queued on the device (on CUDA
    # the two overlap), long before the sampler finishes: each block is in the file within two more blocks.
    denoised = [i for i, e in enumerate(events) if e == "denoise"]
    written = [i for i, e in enumerate(events) if e == "write"]
    assert len(denoised) == len(written) == 6
    assert all(w < denoised[k + 3] for k, w in enumerate(written[:3]))


def test_partial_file_is_readable_while_streaming(cf, tmp_path, monkeypatch):
    """Stop in the middle (as if watching the file): frames already written play back. The run writes beside the
    output, to a hidden temp file that is renamed into place when complete."""
    from cfcli.pipeline.sampler import CausalSampler

    seen = []
    denoise = CausalSampler.denoise_block

    def peek(self, *a, **k):
        if self.blocks_done == 4:
            assert not (tmp_path / "p.mkv").exists()
            (temp,) = tmp_path.glob(".p.cf-*.partial.mkv")
            seen.append(written_frames(temp))
        return denoise(self, *a, **k)

    monkeypatch.setattr(CausalSampler, "denoise_block", peek)
    assert gen(cf, PROMPT, "--frames", 21, "--seed", 1, "--out", tmp_path / "p.mkv", "--codec", "ffv1").exit_code == 0
    assert seen and seen[0] > 0
    assert sorted(p.name for p in tmp_path.glob("*p*.mkv*")) == ["p.mkv"]  # no temp or lock file left


def written_frames(path: Path, wait: float = 5.0) -> int:
    """Frames readable from `path`, polled briefly: the encoder runs on its own thread, a little behind the loop."""
    deadline = time.monotonic() + wait
    while (n := read_video(path).frames.shape[0]) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    return n


def test_ctrl_c_keeps_a_playable_partial_video(cf, tmp_path, monkeypatch):
    from cfcli.pipeline.sampler import CausalSampler

    denoise = CausalSampler.denoise_block

    def interrupt(self, *a, **k):
        if self.blocks_done == 3:
            raise KeyboardInterrupt
        return denoise(self, *a, **k)

    monkeypatch.setattr(CausalSampler, "denoise_block", interrupt)
    out = tmp_path / "stopped.mkv"
    r = gen(cf, PROMPT, "--frames", 33, "--seed", 1, "--out", out, "--codec", "ffv1")
    assert r.exit_code == 130
    assert "stopped" in r.output and "9 frames" in r.output and "stopped.mkv" in r.output
    assert read_video(out).frames.shape[0] == 9  # latents 0..2 -> 1 + 4 + 4 frames


def test_image_to_video_from_a_jpeg_of_another_aspect(cf, tmp_path):
    from PIL import Image

    Image.open(FIXTURES / "framewise_4step_i2v.png").resize((160, 160)).save(tmp_path / "sq.jpg")
    r = gen(cf, "a red ball", "--image", tmp_path / "sq.jpg", "--frames", 9, "--seed", 2, "--out", tmp_path / "i.mp4")
    assert r.exit_code == 0, r.output
    assert read_video(tmp_path / "i.mp4").frames.shape == (9, 3, 48, 80)


def test_repeated_prompt_never_loads_the_text_encoder(cf, tmp_path, monkeypatch):
    from cfcli.pipeline.text import PromptEncoder

    calls = []
    run = PromptEncoder._run_encoder
    monkeypatch.setattr(PromptEncoder, "_run_encoder", lambda self, p: calls.append(p) or run(self, p))
    assert gen(cf, PROMPT, "--frames", 5, "--seed", 1, "--out", tmp_path / "a.mp4", "--save-latents",
               tmp_path / "a.st").exit_code == 0
    assert len(calls) == 1
    assert gen(cf, "  " + PROMPT + "\n", "--frames", 5, "--seed", 1, "--out", tmp_path / "b.mp4", "--save-latents",
               tmp_path / "b.st").exit_code == 0
    assert len(calls) == 1  # the cleaned prompt is the same: served from the disk cache
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(tmp_path / "a.st"))["latents"], load_file(str(tmp_path / "b.st"))["latents"])


def test_prompt_file_loads_models_once(cf, tmp_path, monkeypatch):
    from cfcli.pipeline.engine import Engine

    from cfcli.pipeline.text import PromptEncoder

    loads, encodes = [], []
    load = Engine.load.__func__
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, *a, **k: loads.append(1) or load(cls, *a, **k)))
    run_encoder = PromptEncoder._run_encoder
    monkeypatch.setattr(PromptEncoder, "_run_encoder", lambda self, p: encodes.append(p) or run_encoder(self, p))
    (tmp_path / "prompts.txt").write_text("a fox\n\na cat on a roof\n")
    r = gen(cf, "--prompt-file", tmp_path / "prompts.txt", "--frames", 5, "--seed", 1, "--out", tmp_path / "v.mp4")
    assert r.exit_code == 0, r.output
    assert len(loads) == 1
    assert encodes == [["a fox", "a cat on a roof"]]  # one umT5 load for every prompt, before the DiT
    assert read_video(tmp_path / "v-000.mp4").metadata["prompt"] == "a fox"
    assert read_video(tmp_path / "v-001.mp4").metadata["prompt"] == "a cat on a roof"


def _no_output(tmp_path):
    return not any(p.suffix in (".mp4", ".mkv") for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("args, message", [
    (["   "], "prompt is empty"),
    ([PROMPT, "--frames", 0], "--frames must be positive"),
    ([PROMPT, "--frames", -4], "--frames must be positive"),
    ([PROMPT, "--image", "missing.png"], "image not found"),
    ([PROMPT, "--dtype", "float8"], "unknown dtype"),
    ([PROMPT, "--codec", "mpeg2"], "unknown codec"),
])
def test_bad_input_is_one_clear_message(cf, tmp_path, args, message):
    r = gen(cf, *args, "--out", tmp_path / "x.mp4")
    assert r.exit_code == 1
    assert message in r.output and "Traceback" not in r.output
    assert _no_output(tmp_path)


def test_unreadable_image(cf, tmp_path):
    (tmp_path / "pic.png").write_text("not a picture")
    r = gen(cf, PROMPT, "--image", tmp_path / "pic.png", "--out", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "could not read image" in r.output and _no_output(tmp_path)


def test_image_with_a_chunkwise_preset(cf, tmp_path):
    r = cf("generate", PROMPT, "--preset", FIXTURES / "tiny-chunkwise.yaml", "--device", "cpu", "--image",
           FIXTURES / "framewise_4step_i2v.png", "--out", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "frame-wise" in r.output and _no_output(tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--preset", "no-such-preset"], "unknown preset"),
    (["--mode", "chunkwise", "--steps", 2], "no 2-step chunkwise model"),
    (["--mode", "sideways"], "unknown mode"),
])
def test_unknown_preset_mode_steps(cf, tmp_path, args, message):
    r = cf("generate", PROMPT, *args, "--device", "cpu", "--out", tmp_path / "x.mp4")
    assert r.exit_code == 1 and message in r.output and _no_output(tmp_path)


def _preset_copy(tmp_path, generator: Path | None = None, **arch) -> Path:
    import yaml

    data = yaml.safe_load(TINY.read_text())
    for role, ref in data["weights"].items():
        ref["path"] = str((FIXTURES / ref["path"]).resolve())
    if generator is not None:
        data["weights"]["generator"]["path"] = str(generator)
    data["architecture"]["dit"].update(arch)
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_truncated_checkpoint(cf, tmp_path):
    bad = tmp_path / "w" / "causal_forcing.pt"
    bad.parent.mkdir()
    data = (FIXTURES / "weights" / "causal_forcing.pt").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    r = cf("generate", PROMPT, "--preset", _preset_copy(tmp_path, bad), "--device", "cpu", "--out",
           tmp_path / "x.mp4")
    assert r.exit_code == 1 and "could not read weights" in r.output and "cf download" in r.output
    assert _no_output(tmp_path)


def test_wrong_size_checkpoint(cf, tmp_path):
    r = cf("generate", PROMPT, "--preset", _preset_copy(tmp_path, ffn_dim=96), "--device", "cpu", "--out",
           tmp_path / "x.mp4")
    assert r.exit_code == 1 and "do not match" in r.output and "wrong shape" in r.output
    assert _no_output(tmp_path)


def test_weights_not_downloaded_names_the_command(cf, tmp_path):
    r = cf("generate", PROMPT, "--mode", "framewise", "--steps", 2, "--device", "cpu", "--out", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "not downloaded" in r.output
    assert "cf download --preset framewise-2step" in r.output and _no_output(tmp_path)


def test_unwritable_output_path(cf, tmp_path):
    (tmp_path / "file").write_text("")
    r = gen(cf, PROMPT, "--frames", 5, "--out", tmp_path / "file" / "x.mp4")
    assert r.exit_code == 1 and "cannot write the video" in r.output and "Traceback" not in r.output


def test_cuda_out_of_memory_says_what_to_lower(cf, tmp_path, monkeypatch):
    from cfcli.pipeline.sampler import CausalSampler

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(CausalSampler, "denoise_block", oom)
    r = gen(cf, PROMPT, "--frames", 9, "--out", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "out of memory" in r.output and "--frames" in r.output
    assert _no_output(tmp_path)  # the half-written file is removed


def test_long_video_rolls_the_cache_at_the_horizon():
    """`cf generate --seconds 30` with a global-attention preset: past 21 latent frames the cache rolls."""
    from cfcli.pipeline.engine import Engine
    from cfcli.pipeline.text import PromptEncoder
    from cfcli.presets import load_preset

    preset = load_preset(TINY)
    engine = Engine.load(preset)
    caches = []
    new_cache = engine.new_cache
    engine.new_cache = lambda n: caches.append(new_cache(n)) or caches[-1]
    text = engine.text_kv(PromptEncoder(preset, torch.device("cpu"), torch.float32).encode([PROMPT])[0])
    chunks = list(engine.generate(text, 27, 1, decode=False))  # 105 video frames
    assert len(chunks) == 27 and all(torch.isfinite(c.latents).all() for c in chunks)
    cache = caches[0]
    assert cache.rolling and cache.capacity == 21 * cache.frame_tokens
    assert cache.frames == 21 and cache.global_end == 27 * cache.frame_tokens
    assert cache.kv.shape[3] == cache.capacity  # the buffer never grew
