"""Every public fixture case (the official implementation's outputs on tiny weights) through the real CLI."""

import pytest
from safetensors.torch import load_file

from cfcli.pipeline.video import read_video

from conftest import FIXTURES, cases, contract, rel_err

CASES = {c["name"]: c for c in cases()}


def check(golden, name, latents_file, video_file):
    latents = load_file(str(latents_file))["latents"]
    want = golden[f"{name}.latents"]
    assert latents.dtype.is_floating_point and latents.shape == want.shape
    assert rel_err(latents, want) <= 1e-4
    clip = read_video(video_file)
    pixels = golden[f"{name}.pixels"]
    assert clip.frames.shape == pixels.shape
    assert (clip.frames.int() - pixels.int()).abs().max() <= 2


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if "clip" not in c])
def test_generate_matches_official(name, cf, golden, tmp_path):
    c = CASES[name]
    extra = ["--image", FIXTURES / c["image"]] if c["image"] else []
    r = cf(*contract(c["preset"], c["prompt"], c["seed"], c["video_frames"], tmp_path / "l.safetensors",
                     tmp_path / "v.mkv", *extra))
    assert r.exit_code == 0, r.output
    check(golden, name, tmp_path / "l.safetensors", tmp_path / "v.mkv")


def test_extend_matches_official(cf, golden, tmp_path):
    c = CASES["framewise_4step_extend"]
    r = cf("extend", FIXTURES / c["clip"], "--prompt", c["prompt"], "--preset", FIXTURES / c["preset"], "--seed",
           c["seed"], "--frames", c["new_video_frames"], "--context-frames", c["context_video_frames"], "--only-new",
           "--device", "cpu", "--dtype", "float32", "--save-latents", tmp_path / "l.safetensors", "--out",
           tmp_path / "v.mkv", "--codec", "ffv1")
    assert r.exit_code == 0, r.output
    check(golden, c["name"], tmp_path / "l.safetensors", tmp_path / "v.mkv")


def test_a_different_prompt_moves_the_latents(cf, golden, tmp_path):
    """Guards the tests themselves: the prompt path must matter at the fixture tolerance."""
    c = CASES["framewise_2step_t2v"]
    r = cf(*contract(c["preset"], c["prompt"] + " at night", c["seed"], c["video_frames"], tmp_path / "l.safetensors",
                     tmp_path / "v.mkv"))
    assert r.exit_code == 0, r.output
    assert rel_err(load_file(str(tmp_path / "l.safetensors"))["latents"], golden[f"{c['name']}.latents"]) > 1e-3


def test_bfloat16_stays_within_bf16_tolerance_of_the_official_float32(cf, golden, tmp_path):
    """The bf16 path (official precision map: bf16 weights, modulation and residuals) moves latents by ~3e-3."""
    c = CASES["framewise_2step_t2v"]
    args = contract(c["preset"], c["prompt"], c["seed"], c["video_frames"], tmp_path / "l.safetensors",
                    tmp_path / "v.mkv")
    args[args.index("float32")] = "bfloat16"
    r = cf(*args)
    assert r.exit_code == 0, r.output
    err = rel_err(load_file(str(tmp_path / "l.safetensors"))["latents"], golden[f"{c['name']}.latents"])
    assert 1e-5 < err < 2e-2  # really ran in bf16, and stayed close
