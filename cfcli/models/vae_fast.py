"""The Wan VAE decoder's fast forms: the arithmetic of `cfcli.models.vae`, laid out and fused for GPUs.

Each form is a subclass of a reference module that computes the same products another way. `swap_` turns a module
into one in place, as `torch.nn.utils.parametrize` does: the module keeps its parameters (so its official name and
loaded weights) and gains the derived weights its form needs. `cfcli.pipeline.fast.tune_vae` decides which forms a
decoder gets; the reference modules know nothing of them.

- `channels_last_(vae)`: the decoder's weights and activations channels-last (cuDNN's fastest convolutions on GPUs, no
  layout conversion around each one); its causal convolutions become `ChannelsLastConv3d`.
- `StackedTapsConv3d`: a 3-tap causal convolution as a 2D convolution over the time taps stacked into input channels
  (`cfcli.ops.time_taps`); `TapOutputsConv3d`: the taps stacked as output channels instead (few outputs: the head).
- `SubpixelUpsample`: nearest-2× upsampling and the 3×3 convolution after it as four 2×2 convolutions on the small
  input (`cfcli.ops.subpixel`).
- `FusedRMSNorm`, `FusedResidualBlock`: norm + SiLU (with the bias of the convolution before it) and a residual
  block's bias + shortcut, each as one Triton kernel (`cfcli.ops.fused_norm`, CUDA only).

Precision: the same products, summed in another order; the fused kernels work in float32 and round once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cfcli.models.vae import (CausalCache, CausalConv3d, ResidualBlock, RMSNorm, Upsample, WanVAE, from_frames,
                              per_channel, to_frames)
from cfcli.ops import fused_norm, subpixel
from cfcli.ops.time_taps import stack_taps


def swap_(module: nn.Module, cls: type) -> nn.Module:
    """Make `module` an instance of its fast form `cls` (a subclass of its class), in place; `cls.prepare_` derives
    what the form needs from the module's weights."""
    reference = next(c for c in type(module).__mro__ if c.__module__ == CausalConv3d.__module__)
    if not issubclass(cls, reference):
        raise TypeError(f"{cls.__name__} is not a form of {type(module).__name__}")
    module.__class__ = cls
    cls.prepare_(module)
    return module


def extend_filled(cache: CausalCache, layer: nn.Module, x: Tensor, frames: int,
                  fill: Callable[[Tensor], None]) -> Tensor:
    """`cache.extend(layer, x, frames)` where x only gives the shape and layout: `fill(view)` writes the frames after
    the past straight into the joined tensor (a fused kernel's output lands there instead of being copied in)."""
    past = cache.recall(layer, x, frames)
    b, c, t, h, w = x.shape
    cl = x.is_contiguous(memory_format=torch.channels_last_3d)  # (also where the layout is ambiguous)
    layout = torch.channels_last_3d if cl else torch.contiguous_format
    joined = torch.empty((b, c, frames + t, h, w), dtype=x.dtype, device=x.device, memory_format=layout)
    joined[:, :, :frames] = past
    fill(joined[:, :, frames:])
    cache.keep(layer, joined[:, :, -frames:])
    return joined


class FusedRMSNorm(RMSNorm):
    """`then_silu` as one Triton kernel (`cfcli.ops.fused_norm`, CUDA only): float32 inside, one rounding."""

    fused_weight: Tensor

    def prepare_(self) -> None:
        self.fused_weight = (self.gamma.detach().float() * self.scale).flatten()

    def then_silu(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        return fused_norm.norm_silu(x, self.fused_weight, bias)


class ChannelsLastConv3d(CausalConv3d):
    """The causal convolution on channels-last input; after a `FusedRMSNorm`, the norm writes its output right after
    the cached past frames (no separate join copy)."""

    def prepare_(self) -> None:
        pass

    def convolve(self, x: Tensor, cache: CausalCache, bias: Tensor | None) -> Tensor:
        x = cache.extend(self, x, self.history).contiguous(memory_format=torch.channels_last_3d)  # no-op once so
        return self._conv_forward(x, self.weight, bias)

    def convolve_normed(self, x: Tensor, norm: RMSNorm, norm_bias: Tensor | None, cache: CausalCache,
                        bias: Tensor | None = None) -> Tensor:
        if not isinstance(norm, FusedRMSNorm):
            return super().convolve_normed(x, norm, norm_bias, cache, bias)

        def normalise_into(frames: Tensor) -> None:
            for i in range(x.shape[0]):  # (one video's frames after its past are contiguous rows)
                fused_norm.norm_silu(x[i:i + 1], norm.fused_weight, norm_bias, out=frames[i:i + 1])

        x = x.contiguous(memory_format=torch.channels_last_3d)  # (the layout norm_silu writes)
        return self._conv_forward(extend_filled(cache, self, x, self.history, normalise_into), self.weight, bias)


class StackedTapsConv3d(CausalConv3d):
    """A 2D convolution over the time taps stacked into channels (`cfcli.ops.time_taps`): the same products, summed
    in another order; faster where cuDNN lacks good 3D kernels for the width. After a `FusedRMSNorm`, the stacking
    kernel applies the norm on the way."""

    taps_weight: Tensor

    def prepare_(self) -> None:
        o, c, k, kh, kw = self.weight.shape
        weight = self.weight.detach().transpose(1, 2).reshape(o, k * c, kh, kw)  # channel j·C + c = tap j, channel c
        self.taps_weight = weight.contiguous(memory_format=torch.channels_last)

    def convolve(self, x: Tensor, cache: CausalCache, bias: Tensor | None,
                 norm: tuple[Tensor, Tensor | None] | None = None) -> Tensor:
        stacked, tail = stack_taps(cache.recall(self, x, self.history), x, norm)
        cache.remember(self, tail)
        return from_frames(F.conv2d(stacked, self.taps_weight, bias, padding=self.padding[1:]), x.shape[0])

    def convolve_normed(self, x: Tensor, norm: RMSNorm, norm_bias: Tensor | None, cache: CausalCache,
                        bias: Tensor | None = None) -> Tensor:
        if not isinstance(norm, FusedRMSNorm):
            return super().convolve_normed(x, norm, norm_bias, cache, bias)
        return self.convolve(x, cache, bias, norm=(norm.fused_weight, norm_bias))


class TapOutputsConv3d(CausalConv3d):
    """For few output channels (the decoder's 96 → 3 head, on which cuDNN's 3D kernels idle): convolve each new frame
    once, in 2D, with the k time taps' weights stacked as output channels, and sum each output frame's k taps from
    the last k frames' results, in float32 with the bias, rounded once. The cache keeps those per-frame results (k·O
    channels) instead of input frames. Each tap's partial sum is rounded to the module dtype before the sum."""

    tap_outputs_weight: Tensor

    def prepare_(self) -> None:
        o, c, k, kh, kw = self.weight.shape
        weight = self.weight.detach().permute(2, 0, 1, 3, 4).reshape(k * o, c, kh, kw)  # channel j·O + o: tap j
        weight = F.pad(weight, (0, 0, 0, 0, 0, 0, 0, -(k * o) % 8))  # 8-aligned output channels for cuDNN
        self.tap_outputs_weight = weight.contiguous(memory_format=torch.channels_last)

    def convolve(self, x: Tensor, cache: CausalCache, bias: Tensor | None) -> Tensor:
        b, t = x.shape[0], x.shape[2]
        o, k = self.out_channels, self.history + 1
        taps = from_frames(F.conv2d(to_frames(x), self.tap_outputs_weight, None, padding=self.padding[1:]), b)
        joined = cache.extend(self, taps, self.history)  # [B, k·O (padded), k-1 + T, H, W]
        out = sum(joined[:, j * o:(j + 1) * o, j:j + t].float() for j in range(k))  # output frame i: frames i .. i+k-1
        if bias is not None:
            out = out + per_channel(bias.float(), out)
        return out.to(x.dtype)


class FusedResidualBlock(ResidualBlock):
    """The output's bias and shortcut added in one Triton kernel (`cfcli.ops.fused_norm`, CUDA only)."""

    def prepare_(self) -> None:
        pass

    def add_shortcut(self, h: Tensor, bias: Tensor, x: Tensor) -> Tensor:
        return fused_norm.add_bias_residual_(h, bias, self.shortcut(x))


class SubpixelUpsample(Upsample):
    """Upsample and convolve as four 2×2 convolutions on the small input (`cfcli.ops.subpixel`): 2.25× fewer products
    and no upsampled copy; the summed taps are rounded to the weight dtype once."""

    phase_weight: Tensor
    phase_bias: Tensor | None

    def prepare_(self) -> None:
        conv = self.resample[1]
        bias = None if conv.bias is None else conv.bias.detach()
        self.phase_weight, self.phase_bias = subpixel.phase_weights(conv.weight.detach(), bias)

    def upsample_conv(self, frames: Tensor) -> Tensor:
        return subpixel.upsample_conv(frames, self.phase_weight, self.phase_bias)


def channels_last_(vae: WanVAE) -> WanVAE:
    """Store the decoder's convolution weights channels-last, so that its activations stay channels-last too (cuDNN's
    fastest kernels on GPUs, no layout conversions around each convolution). Same arithmetic; the convolutions may
    sum in another order."""
    for m in vae.decoder.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d):
            fmt = torch.channels_last_3d if m.weight.dim() == 5 else torch.channels_last
            m.weight.data = m.weight.data.contiguous(memory_format=fmt)
        if type(m) is CausalConv3d:
            swap_(m, ChannelsLastConv3d)
    vae.conv2.weight.data = vae.conv2.weight.data.contiguous(memory_format=torch.channels_last_3d)
    return vae
