"""`cfcli.models.geometry` and `cfcli.models.build`: strides and lengths from the configs, and a preset whose VAE has
other strides (2× in time, 4× in space) run end to end through the real CLI."""

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cfcli.models.build import build_models, model_configs
from cfcli.models.geometry import Geometry
from cfcli.pipeline.video import read_video

from conftest import FIXTURES, PROMPT

WAN = model_configs({}).geometry
STRIDE2 = Geometry(time_stride=2, space_stride=4, patch=(1, 2, 2), latent_channels=16, text_len=512, rope_frames=1024)
SMALL_VAE = {"dim": 8, "dim_mult": [1, 2, 4], "temporal_downsample": [True, False]}  # 2× in time, 4× in space


# --- the helpers ----------------------------------------------------------------------------------------------------

def test_the_released_models_geometry():
    assert WAN == Geometry(4, 8, (1, 2, 2), 16, 512, 1024)
    assert WAN.size_multiple == 16 and WAN.latent_size(480, 832) == (60, 104) and WAN.frame_tokens(60, 104) == 1560
    assert WAN.max_latent_frames == 1023 and WAN.max_video_frames == 4089
    assert WAN.video_size(60, 104) == (480, 832)


@pytest.mark.parametrize("g, latents, frames", [(WAN, 21, 81), (WAN, 1, 1), (STRIDE2, 21, 41), (STRIDE2, 6, 11)])
def test_video_and_latent_frame_counts(g, latents, frames):
    assert g.video_frames_for(latents) == frames and g.latent_frames_for(frames) == latents
    assert g.video_frames_for(0) == 0
    assert g.continuation_frames(latents) == g.time_stride * latents


@pytest.mark.parametrize("g, bad", [(WAN, 80), (WAN, 0), (STRIDE2, 10)])
def test_a_length_the_vae_cannot_make_is_refused(g, bad):
    with pytest.raises(ValueError, match=f"not 1 \\+ {g.time_stride}k"):
        g.latent_frames_for(bad)


def test_rounding_up_to_lengths_the_vae_makes():
    assert [WAN.latent_frames_covering(n) for n in (1, 2, 5, 6, 81, 82)] == [1, 2, 2, 3, 21, 22]
    assert [STRIDE2.latent_frames_covering(n) for n in (1, 2, 3, 4, 10)] == [1, 2, 2, 3, 6]
    assert [WAN.continuation_latents(n) for n in (1, 4, 5, 64)] == [1, 1, 2, 16]
    assert [STRIDE2.continuation_latents(n) for n in (1, 2, 3, 64)] == [1, 1, 2, 32]


@pytest.mark.parametrize("g", [WAN, STRIDE2])
def test_each_video_frame_maps_to_the_latent_frame_that_makes_it(g):
    # Latent 0 makes frame 0; latent k ≥ 1 makes the s frames s(k−1)+1 … sk.
    made_by = [0] + [k for k in range(1, 6) for _ in range(g.time_stride)]
    assert [g.latent_at(f) for f in range(len(made_by))] == made_by
    assert [g.first_frame_of(k) for k in range(4)] == [0, 1, 1 + g.time_stride, 1 + 2 * g.time_stride]


def test_size_multiple_follows_the_patch():
    g = Geometry(4, 8, (1, 2, 3), 16, 512, 1024)
    assert g.size_multiple == 48 and g.frame_tokens(60, 105) == 30 * 35


def test_configs_and_models_from_a_preset_architecture():
    configs = model_configs({"dit": {"patch_size": [1, 2, 2], "text_len": 64, "rope_frames": 100},
                             "vae": {"family": "wan2.1", **SMALL_VAE}})
    assert configs.vae_family == "wan2.1" and configs.dit.patch_size == (1, 2, 2)
    assert configs.geometry == Geometry(2, 4, (1, 2, 2), 16, 64, 100)
    models = build_models(configs)
    assert models.dit.patch_embedding.weight.is_meta and models.vae.conv2.weight.is_meta
    assert models.vae.cfg.temporal_stride == 2 and models.configs is configs


# --- a preset with a 2×/4× VAE, end to end --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stride2_preset(tmp_path_factory) -> Path:
    """tiny-framewise.yaml with a random VAE of time stride 2 and space stride 4 at 40×56 (not a multiple of 16:
    its size multiple is 4 · 2 = 8), saved in the official `Wan2.1_VAE.pth` key layout."""
    from cfcli.models.vae import VAEConfig, WanVAE

    folder = tmp_path_factory.mktemp("stride2")
    torch.manual_seed(0)
    torch.save(WanVAE(VAEConfig(**SMALL_VAE)).state_dict(), folder / "vae.pth")
    data = yaml.safe_load((FIXTURES / "tiny-framewise.yaml").read_text())
    data["weights"] = {role: {"path": str(FIXTURES / e["path"])} for role, e in data["weights"].items()}
    data["weights"]["vae"] = {"path": str(folder / "vae.pth")}
    data["architecture"]["vae"] = {"family": "wan2.1", **SMALL_VAE}
    data.update(name="tiny-stride2", height=40, width=56, frames=9)
    path = folder / "tiny-stride2.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(cf, preset: Path, *args):
    r = cf(*args, "--preset", preset, "--device", "cpu", "--dtype", "float32", "--codec", "ffv1")
    assert r.exit_code == 0, r.output
    return r


def test_the_preset_geometry_and_size_multiple(stride2_preset, cf, tmp_path):
    from cfcli.presets import load_preset

    assert load_preset(stride2_preset).geometry == STRIDE2
    r = cf("generate", "a fox", "--preset", stride2_preset, "--height", 44, "--out", tmp_path / "o.mkv")
    assert r.exit_code == 1 and "--height must be a positive multiple of 8, got 44" in r.output


def test_generate_then_extend_with_a_stride_2_vae(stride2_preset, cf, tmp_path):
    out, lat = tmp_path / "clip.mkv", tmp_path / "clip.safetensors"
    r = run(cf, stride2_preset, "generate", PROMPT, "--frames", 10, "--seed", 3, "--out", out, "--save-latents", lat)
    assert "10 frames is not a length the model makes; generating 11" in r.output  # 1 + 2·(6 − 1)
    clip = read_video(out)
    assert tuple(clip.frames.shape) == (11, 3, 40, 56)
    assert tuple(load_file(str(lat))["latents"].shape) == (6, 16, 10, 14)

    longer = tmp_path / "longer.mkv"
    r = run(cf, stride2_preset, "extend", out, "--frames", 5, "--seed", 4, "--out", longer)
    assert "5 new frames is not a length the model makes; generating 6" in r.output  # 2 per latent frame
    result = read_video(longer)
    assert tuple(result.frames.shape) == (11 + 6, 3, 40, 56)
    assert torch.equal(result.frames[:11], clip.frames)
    # The default frame-wise context is 5 latent frames: 1 + 2·4 = 9 clip frames.
    assert result.metadata["context_frames"] == 9 and result.metadata["new_frames"] == 6


def test_a_prompt_switch_lands_where_the_stride_2_geometry_says(stride2_preset, cf, tmp_path):
    plain, switched = tmp_path / "plain.safetensors", tmp_path / "switched.safetensors"
    common = ("--frames", 11, "--seed", 5, "--fps", 16)
    run(cf, stride2_preset, "generate", PROMPT, *common, "--out", tmp_path / "a.mkv", "--save-latents", plain)
    r = run(cf, stride2_preset, "generate", PROMPT, *common, "--prompt-at", "0.25s", "a red kite over the sea",
            "--out", tmp_path / "b.mkv", "--save-latents", switched)
    # 0.25 s at 16 fps is frame 4, made by latent (4 + 1) // 2 = 2, whose first frame is 1 + 2·(2 − 1) = 3.
    assert "from frame 3 (0.19s), earlier than asked" in r.output
    assert "(each latent frame makes 2 video frames)" in r.output
    a, b = load_file(str(plain))["latents"], load_file(str(switched))["latents"]
    assert torch.equal(a[:2], b[:2]) and not torch.equal(a[2], b[2])  # the switch starts at latent frame 2
    schedule = read_video(tmp_path / "b.mkv").metadata["prompt_schedule"]
    assert schedule == [[0, PROMPT], [0.25, "a red kite over the sea"]]
