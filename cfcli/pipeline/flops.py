"""FLOP model of a generation: the DiT per call over the sampler's real call sequence, the VAE decoder, umT5.

`cf bench` sets every timing against these counts (docs/performance.md). The DiT is counted analytically per call
(spec §7.1–7.2) over the sampler's own call plan (`SamplerKind.calls`); the VAE decoder by running the
real streaming decoder on the meta device under `FlopCounterMode`; umT5 analytically. 2 FLOPs per multiply-add,
matmuls and convolutions only.
"""

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from cfcli.models.build import ModelConfigs, build_vae
from cfcli.models.dit import DiTConfig
from cfcli.models.t5 import T5Config
from cfcli.models.taehv import TAEHV, TAEHVConfig
from cfcli.pipeline.sampler import DiTCall
from cfcli.pipeline.samplers import sampler_kind
from cfcli.presets import Preset


def dit_call_flops(cfg: DiTConfig, frame_tokens: int, call: DiTCall) -> int:
    """FLOPs (2 per multiply-add) of one DiT forward: matmuls and attention only (spec §7.1)."""
    d, n, k = cfg.dim, call.frames * frame_tokens, call.keys * frame_tokens
    linear = n * (12 * d * d + 4 * d * cfg.ffn_dim)  # q,k,v,o self; q,o cross; FFN
    attn = 4 * n * k * d + 4 * n * cfg.text_len * d  # scores + values, self and cross (all text_len keys)
    patch = math.prod(cfg.patch_size)
    io = 2 * n * d * patch * (cfg.in_dim + cfg.out_dim)  # patch embedding + head
    t = 2 * call.frames * (cfg.freq_dim * d + d * d + 6 * d * d)  # time MLP + projection, per latent frame
    return cfg.num_layers * (linear + attn) + io + t


def text_kv_flops(cfg: DiTConfig) -> int:
    """Text embedding MLP + every layer's cross K/V projections, once per prompt (`Engine.text_kv`)."""
    t, d = cfg.text_len, cfg.dim
    return 2 * t * (cfg.text_dim * d + d * d) + cfg.num_layers * 4 * t * d * d


def dit_block_calls(preset: Preset, latent_frames: int) -> list[list[DiTCall]]:
    """The preset's sampler's own call plan (`cfcli.pipeline.samplers`), grouped as `cf bench` times blocks."""
    return sampler_kind(preset).calls(preset, latent_frames)


@functools.lru_cache(maxsize=8)
def vae_latent_flops(configs: ModelConfigs, h: int, w: int) -> tuple[int, int]:
    """Decoder FLOPs of (the first latent frame, each later one) at latent size h×w.

    Counted by running the real streaming decoder on the meta device under FlopCounterMode: convolutions and the
    middle attention's matmuls, exactly as shaped at this resolution, no arithmetic run. Every later latent frame
    runs identical ops (the first skips the time upsampling and makes 1 frame instead of 4).
    """
    return decoder_latent_flops(build_vae(configs), configs.vae.z_dim, h, w)


@functools.lru_cache(maxsize=8)
def taehv_latent_flops(cfg: TAEHVConfig, h: int, w: int) -> tuple[int, int]:
    """`vae_latent_flops` for the TAEHV tiny decoder (`--decoder taehv`)."""
    with torch.device("meta"):
        model = TAEHV(cfg)
    return decoder_latent_flops(model, cfg.latent_channels, h, w)


def decoder_latent_flops(model: nn.Module, channels: int, h: int, w: int) -> tuple[int, int]:
    """(first, each later) latent frame's FLOPs of `model`'s streaming decoder, built on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.empty(1, 2, channels, h, w, device="meta")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        decoder = model.stream_decoder()
        decoder.decode(z[:, :1])
        first = counter.get_total_flops()
        decoder.decode(z[:, 1:])
        later = counter.get_total_flops() - first
    return first, later


def t5_flops(cfg: T5Config, tokens: int) -> int:
    """umT5 encoder over `tokens` real tokens: projections, gated FFN, attention scores + values."""
    per_token = 2 * (4 * cfg.dim * cfg.dim_attn + 3 * cfg.dim * cfg.dim_ffn) + 4 * tokens * cfg.dim_attn
    return cfg.num_layers * tokens * per_token


@dataclass
class FlopPlan:
    dit_blocks: list[int]  # DiT FLOPs timed in each block's interval (block 0 includes the text K/V)
    vae_blocks: list[int]  # decoder FLOPs of each block's latents
    vae_first: int  # decoder FLOPs of the video's first latent frame (its pixels come out first)


def flop_plan(preset: Preset, latent_frames: int, decoder: str = "wan") -> FlopPlan:
    configs = preset.configs
    dcfg = configs.dit
    h, w = configs.geometry.latent_size(preset.height, preset.width)
    tokens = configs.geometry.frame_tokens(h, w)
    dit = [sum(dit_call_flops(dcfg, tokens, c) for c in calls) for calls in dit_block_calls(preset, latent_frames)]
    dit[0] += text_kv_flops(dcfg)
    if decoder == "taehv":
        first, later = taehv_latent_flops(TAEHVConfig(), h, w)
    else:
        first, later = vae_latent_flops(configs, h, w)
    bf = preset.block_frames
    vae = [first + (bf - 1) * later if i == 0 else bf * later for i in range(len(dit))]
    return FlopPlan(dit, vae, first)
