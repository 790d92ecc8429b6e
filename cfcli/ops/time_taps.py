"""The input of a causal 3-tap time convolution, with its taps stacked into channels.

A causal convolution with a `k`-frame time kernel sees, for output frame t, input frames t .. t+k-1 of
[past (k-1 frames), x (T frames)]. Stacking those k frames along channels turns it into a 2D convolution over
[T, k·C, H, W] with the weight reshaped to [O, k·C, kh, kw]: the same products in one GEMM. That matters on Hopper,
where cuDNN has wgmma kernels for 2D convolutions but runs 3D ones of 96 channels on an sm80 kernel at a third of the
speed (docs/performance.md).

`stack_taps(past, x)` builds that input. On CUDA a Triton kernel reads each input frame once and writes it to the
up to k places it goes; elsewhere it is a concatenation of the k windows. Both are exact copies.

In the decoder every such convolution follows an RMS norm + SiLU (`cfcli.ops.fused_norm.norm_silu`). With `norm`, the
kernel applies it to the new frames on the way (the past is already normalised), so the normalised activation is
never written and read back on its own: the same float32 arithmetic and one rounding, as `norm_silu` then stacking.
"""

import functools

import torch
from torch import Tensor

from cfcli.ops.triton_rows import available, tiling


def stack_taps(past: Tensor, x: Tensor, norm: tuple[Tensor, Tensor | None] | None = None) -> tuple[Tensor, Tensor]:
    """past [B, C, k-1, H, W], x [B, C, T, H, W] -> (stacked, tail):

    - stacked [B·T, k·C, H, W] channels-last, where channels j·C .. (j+1)·C of frame t hold frame t+j of [past, x];
    - tail [B, C, k-1, H, W], the last k-1 frames of [past, x] (the next chunk's past), a fresh tensor.

    With `norm` = (weight [C] float32, bias [C] or None), x stands for SiLU(y / max(‖y‖₂ over C, 1e-12) · weight),
    y = x + bias: `norm_silu`'s arithmetic, rounded once to x's dtype.
    """
    b, c, t, h, w = x.shape
    taps = past.shape[2] + 1
    if available(x):
        return _stack_triton(past, x, taps, norm)
    if norm is not None:
        x = _norm_silu(x, *norm)
    joined = torch.cat([past, x], dim=2)
    stacked = torch.cat([joined[:, :, j:j + t] for j in range(taps)], dim=1)  # [B, k·C, T, H, W]
    stacked = stacked.transpose(1, 2).reshape(b * t, taps * c, h, w).contiguous(memory_format=torch.channels_last)
    return stacked, joined[:, :, t:].clone()


def _norm_silu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    y = x.float() if bias is None else x.float() + bias.float().view(-1, 1, 1, 1)
    y = y / y.norm(dim=1, keepdim=True).clamp_min(1e-12) * weight.view(-1, 1, 1, 1)
    return (y / (1.0 + torch.exp(-y))).to(x.dtype)


def _stack_triton(past: Tensor, x: Tensor, taps: int,
                  norm: tuple[Tensor, Tensor | None] | None) -> tuple[Tensor, Tensor]:
    b, c, t, h, w = x.shape
    past = past.contiguous(memory_format=torch.channels_last_3d)  # [B, k-1, H, W, C] in memory; free if already so
    x = x.contiguous(memory_format=torch.channels_last_3d)
    out = torch.empty(b * t, h, w, taps * c, dtype=x.dtype, device=x.device)
    hist = taps - 1
    tail = torch.empty(b, hist, h, w, c, dtype=x.dtype, device=x.device)
    rows = b * (hist + t) * h * w  # one row = one pixel's C channels of one input frame
    grid, blocks = tiling(rows, c)
    weight, bias = norm if norm is not None else (x, None)  # (x: an unused pointer)
    _build()[grid](past, x, out, tail, weight, bias if bias is not None else weight, rows, t, h * w, c, HIST=hist,
                   NORM=norm is not None, HAS_BIAS=bias is not None, **blocks)
    return out.permute(0, 3, 1, 2), tail.permute(0, 4, 1, 2, 3)  # both channels-last


@functools.cache
def _build():
    import triton
    import triton.language as tl

    @triton.jit
    def stack_taps_rows(past_ptr, x_ptr, out_ptr, tail_ptr, w_ptr, b_ptr, n_rows, frames, pixels, channels,
                        HIST: tl.constexpr, NORM: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr,
                        ROWS: tl.constexpr):
        # Row r = (batch, s, pixel) over the joined frames s of [past (HIST), x (frames)].
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
        cols = tl.arange(0, BLOCK_C)[None, :]
        mask = (rows < n_rows) & (cols < channels)
        pixel = rows % pixels
        bs = rows // pixels
        s = bs % (HIST + frames)
        batch = bs // (HIST + frames)
        in_past = s < HIST
        past_row = (batch * HIST + s) * pixels + pixel
        x_row = (batch * frames + s - HIST) * pixels + pixel
        v = tl.load(past_ptr + past_row.to(tl.int64) * channels + cols, mask=mask & in_past, other=0.0)
        new = tl.load(x_ptr + x_row.to(tl.int64) * channels + cols, mask=mask & ~in_past, other=0.0)
        if NORM:  # norm_silu's arithmetic (cfcli.ops.fused_norm) on the new frames
            y = new.to(tl.float32)
            if HAS_BIAS:
                y = y + tl.load(b_ptr + cols, mask=cols < channels, other=0.0).to(tl.float32)
            norm = tl.sqrt(tl.sum(y * y, axis=1))[:, None]
            y = y / tl.maximum(norm, 1e-12) * tl.load(w_ptr + cols, mask=cols < channels, other=0.0)
            y = y / (1.0 + tl.exp(-y))
            new = y.to(x_ptr.dtype.element_ty)
        v = tl.where(in_past, v, new)
        # Joined frame s is tap j of output frame s - j.
        for j in tl.static_range(HIST + 1):
            t = s - j
            ok = mask & (t >= 0) & (t < frames)
            out_row = (batch * frames + t) * pixels + pixel
            tl.store(out_ptr + (out_row.to(tl.int64) * (HIST + 1) + j) * channels + cols, v, mask=ok)
        # The last HIST joined frames are the next chunk's past.
        tail_row = (batch * HIST + s - frames) * pixels + pixel
        tl.store(tail_ptr + tail_row.to(tl.int64) * channels + cols, v, mask=mask & (s >= frames))

    return stack_taps_rows
