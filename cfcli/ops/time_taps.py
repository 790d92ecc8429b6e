"""The input of a causal 3-tap time convolution, with its taps stacked into channels.

A causal convolution with a `k`-frame time kernel sees, for output frame t, input frames t .. t+k-1 of
[past (k-1 frames), x (T frames)]. Stacking those k frames along channels turns it into a 2D convolution over
[T, k·C, H, W] with the weight reshaped to [O, k·C, kh, kw]: the same products in one GEMM. That matters on Hopper,
where cuDNN has wgmma kernels for 2D convolutions but runs 3D ones of 96 channels on an sm80 kernel at a third of the
speed (docs/performance.md).

`stack_taps(past, x)` builds that input. On CUDA a Triton kernel reads each input frame once and writes it to the
up to k places it goes; elsewhere it is a concatenation of the k windows. Both are exact copies.
"""

import functools

import torch
from torch import Tensor

from cfcli.ops.triton_rows import available, tiling


def stack_taps(past: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """past [B, C, k-1, H, W], x [B, C, T, H, W] -> (stacked, tail):

    - stacked [B·T, k·C, H, W] channels-last, where channels j·C .. (j+1)·C of frame t hold frame t+j of [past, x];
    - tail [B, C, k-1, H, W], the last k-1 frames of [past, x] (the next chunk's past), a fresh tensor.
    """
    b, c, t, h, w = x.shape
    taps = past.shape[2] + 1
    if available(x):
        return _stack_triton(past, x, taps)
    joined = torch.cat([past, x], dim=2)
    stacked = torch.cat([joined[:, :, j:j + t] for j in range(taps)], dim=1)  # [B, k·C, T, H, W]
    stacked = stacked.transpose(1, 2).reshape(b * t, taps * c, h, w).contiguous(memory_format=torch.channels_last)
    return stacked, joined[:, :, t:].clone()


def _stack_triton(past: Tensor, x: Tensor, taps: int) -> tuple[Tensor, Tensor]:
    b, c, t, h, w = x.shape
    past = past.contiguous(memory_format=torch.channels_last_3d)  # [B, k-1, H, W, C] in memory; free if already so
    x = x.contiguous(memory_format=torch.channels_last_3d)
    out = torch.empty(b * t, h, w, taps * c, dtype=x.dtype, device=x.device)
    hist = taps - 1
    tail = torch.empty(b, hist, h, w, c, dtype=x.dtype, device=x.device)
    rows = b * (hist + t) * h * w  # one row = one pixel's C channels of one input frame
    grid, blocks = tiling(rows, c)
    _build()[grid](past, x, out, tail, rows, t, h * w, c, HIST=hist, **blocks)
    return out.permute(0, 3, 1, 2), tail.permute(0, 4, 1, 2, 3)  # both channels-last


@functools.cache
def _build():
    import triton
    import triton.language as tl

    @triton.jit
    def stack_taps_rows(past_ptr, x_ptr, out_ptr, tail_ptr, n_rows, frames, pixels, channels,
                        HIST: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr):
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
        v = tl.where(in_past, v, tl.load(x_ptr + x_row.to(tl.int64) * channels + cols, mask=mask & ~in_past, other=0.0))
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
