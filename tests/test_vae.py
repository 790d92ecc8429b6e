"""Wan VAE against the official implementation's outputs on a tiny (base dim 8) checkpoint."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cfcli.models.vae import LATENT_MEAN, LATENT_STD, VAEConfig, WanVAE

from conftest import stream_in_chunks

FIXTURES = Path(__file__).parent / "fixtures"
CASES = json.loads((FIXTURES / "cases.json").read_text())


def tiny_config() -> VAEConfig:
    cfg = CASES["vae"]
    return VAEConfig(dim=cfg["dim"], z_dim=cfg["z_dim"], dim_mult=tuple(cfg["dim_mult"]),
                     num_res_blocks=cfg["num_res_blocks"], temporal_downsample=tuple(cfg["temperal_downsample"]))


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    model = WanVAE(tiny_config()).eval()
    state = torch.load(FIXTURES / "weights" / "Wan2.1_VAE.pth", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model


@pytest.fixture(scope="module")
def tensors() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "cases.safetensors")


@pytest.mark.parametrize("case", [c["name"] for c in CASES["vae_cases"]])
def test_encode_matches_official(vae, tensors, case):
    clip, expected = tensors[f"{case}.clip"], tensors[f"{case}.latents"]
    latents = vae.encode(clip[None])[0]
    assert latents.shape == expected.shape and latents.dtype == torch.float32
    assert ((latents - expected).norm() / expected.norm()).item() <= 1e-5


@pytest.mark.parametrize("case", [c["name"] for c in CASES["vae_cases"]])
def test_decode_matches_official(vae, tensors, case):
    latents, expected = tensors[f"{case}.latents"], tensors[f"{case}.pixels"]
    pixels = vae.decode(latents[None])[0]
    assert pixels.shape == expected.shape and pixels.dtype == torch.float32
    assert (pixels - expected).abs().max().item() <= 1e-4
    assert pixels.abs().max().item() <= 1.0


@pytest.mark.parametrize("chunks", [(1, 1, 2, 1), (3, 2), (2, 3)])
def test_streaming_equals_whole_decode(vae, chunks):
    latents = torch.randn(1, sum(chunks), 16, 6, 10, generator=torch.Generator().manual_seed(0))
    whole = vae.decode(latents)
    assert (stream_in_chunks(vae, latents, chunks) - whole).abs().max().item() <= 1e-6


def test_batch_matches_single(vae, tensors):
    clip = tensors["vae_9.clip"]
    pair = torch.stack([clip, clip.flip(-1)])
    latents = vae.encode(pair)
    assert latents.shape == (2, 3, 16, 6, 10)
    torch.testing.assert_close(latents[1], vae.encode(pair[1:])[0], rtol=0, atol=1e-5)
    pixels = vae.decode(latents)
    assert pixels.shape == (2, 9, 3, 48, 80)
    torch.testing.assert_close(pixels[1], vae.decode(latents[1:])[0], rtol=0, atol=1e-5)


def test_real_size_keys_and_parameter_count():
    with torch.device("meta"):
        model = WanVAE(VAEConfig())
    state = model.state_dict()
    # From the official constructor: 194 tensors; encoder 53,595,872 + 2 x (32·32 + 32) for conv1
    # + 16·16 + 16 for conv2 + decoder 73,295,331 = 126,892,531 parameters (= 507.6 MB in float32).
    assert len(state) == 194
    assert sum(t.numel() for t in state.values()) == 126_892_531
    assert sum(t.numel() for k, t in state.items() if k.startswith("encoder.")) == 53_595_872
    assert sum(t.numel() for k, t in state.items() if k.startswith("decoder.")) == 73_295_331
    assert state["decoder.upsamples.3.time_conv.weight"].shape == (768, 384, 3, 1, 1)
    assert state["decoder.upsamples.3.resample.1.weight"].shape == (192, 384, 3, 3)
    assert state["encoder.middle.1.to_qkv.weight"].shape == (1152, 384, 1, 1)
    assert state["encoder.head.2.weight"].shape == (32, 384, 3, 3, 3)
    assert state["decoder.head.2.weight"].shape == (3, 96, 3, 3, 3)


def test_tiny_keys_equal_the_file(vae):
    state = torch.load(FIXTURES / "weights" / "Wan2.1_VAE.pth", weights_only=True)
    assert list(vae.state_dict()) == list(state)


def test_latent_constants_round_like_the_reference(vae):
    model = WanVAE(tiny_config())
    mean, inv_std = model.latent_stats(torch.zeros(1, dtype=torch.bfloat16))
    assert mean.dtype == torch.bfloat16
    assert torch.equal(mean, torch.tensor(LATENT_MEAN).to(torch.bfloat16))
    assert torch.equal(inv_std, 1.0 / torch.tensor(LATENT_STD).to(torch.bfloat16))
    # A round trip through bf16 must not leave the float32 constants rounded.
    model.to(torch.bfloat16).to(torch.float32)
    mean, inv_std = model.latent_stats(torch.zeros(1))
    assert torch.equal(mean, torch.tensor(LATENT_MEAN))
    assert torch.equal(inv_std, 1.0 / torch.tensor(LATENT_STD))


def test_meta_build_loaded_by_assignment(tensors):
    with torch.device("meta"):
        model = WanVAE(tiny_config())
    state = torch.load(FIXTURES / "weights" / "Wan2.1_VAE.pth", weights_only=True)
    model.load_state_dict(state, strict=True, assign=True)
    pixels = model.eval().decode(tensors["vae_1.latents"][None])[0]
    assert (pixels - tensors["vae_1.pixels"]).abs().max().item() <= 1e-4


def test_config_from_yaml_lists_is_hashable():
    cfg = VAEConfig(dim=8, dim_mult=[1, 2, 4, 4], temporal_downsample=[False, True, True])
    assert cfg == tiny_config() and hash(cfg) == hash(tiny_config())


def test_bfloat16_runs_close_to_float32(vae, tensors):
    model = WanVAE(tiny_config()).eval()
    model.load_state_dict(vae.state_dict())
    model.to(torch.bfloat16)
    latents = model.encode(tensors["vae_9.clip"][None])
    assert latents.dtype == torch.bfloat16
    assert (latents.float()[0] - tensors["vae_9.latents"]).abs().mean().item() < 0.02
    pixels = model.decode(tensors["vae_9.latents"][None])
    assert pixels.dtype == torch.float32
    # bf16 rounding alone moves the tiny random model's pixels by ~1e-2 on average.
    assert (pixels[0] - tensors["vae_9.pixels"]).abs().mean().item() < 0.03


def test_rejects_bad_shapes(vae):
    with pytest.raises(ValueError):
        vae.encode(torch.zeros(1, 3, 4, 48, 80))
    with pytest.raises(ValueError):
        vae.decode(torch.zeros(1, 2, 8, 6, 10))
    assert vae.stream_decoder().decode(torch.zeros(1, 0, 16, 6, 10)).shape == (1, 0, 3, 48, 80)


def test_upsample_nearest_2x_equals_nn_upsample_in_both_layouts():
    from cfcli.models.vae import upsample_nearest_2x

    x = torch.randn(2, 5, 3, 4)
    want = torch.nn.Upsample(scale_factor=2.0, mode="nearest")(x)
    assert torch.equal(upsample_nearest_2x(x), want)
    last = upsample_nearest_2x(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(last, want) and last.is_contiguous(memory_format=torch.channels_last)
