"""Nearest 2× upsampling followed by a 3×3 convolution (padding 1), as four 2×2 convolutions on the small input.

Output pixel (2i + a, 2j + b) of the upsampled convolution sees upsampled rows 2i + a - 1 .. 2i + a + 1, which are
input rows i - 1, i, i for a = 0 and i, i, i + 1 for a = 1 (columns alike). So each of the four output phases (a, b)
is a 2×2 convolution of the input with the 3×3 taps that land on the same input pixel summed: 16 instead of 36
multiply-adds per input pixel and output channel, and no upsampled copy of the input. The zero padding matches too:
the upsampled image's border pixel of zeros falls on the input's border pixel of zeros.

The phases run as one convolution with 4·O output channels over the input padded by 1, whose output is one row and
column larger than the input; phase (a, b) is its window starting at row a, column b. Same products as the
reference; the summed taps are rounded to the weight's dtype once, from float32. On CUDA one Triton kernel
interleaves the phases into the output and adds the bias on the way (four strided copies and a bias pass cost more:
docs/performance.md); elsewhere the convolution adds the bias and four copies
interleave.
"""

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from cfcli.ops.triton_rows import available, tiling


def _fold(weight: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """3 taps along `dim` -> the 2 taps of phase 0 (w0 | w1 + w2) and of phase 1 (w0 + w1 | w2)."""
    w0, w1, w2 = weight.unbind(dim)
    return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)


def phase_weights(weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """A 3×3 convolution's weight [O, C, 3, 3] and bias [O] -> the phase convolution's [4·O, C, 2, 2] and [4·O];
    phase (a, b) holds output channels (2a + b)·O .. (2a + b + 1)·O. Same dtype and memory format as `weight`."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"expected a 3×3 convolution weight, got {list(weight.shape)}")
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    rows = _fold(weight.to(acc), 2)
    phases = torch.cat([col for row in rows for col in _fold(row, 3)])
    fmt = torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return phases.to(weight.dtype).contiguous(memory_format=fmt), None if bias is None else bias.repeat(4)


def upsample_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """conv3x3(nearest_upsample_2x(x)) for x [N, C, H, W] with the `phase_weights` of the 3×3 convolution ->
    [N, O, 2H, 2W], in x's memory format."""
    n, _, h, w = x.shape
    o = weight.shape[0] // 4
    fmt = torch.channels_last if x.stride(1) == 1 and x.shape[1] > 1 else torch.contiguous_format
    if fmt == torch.channels_last and available(x):
        y = F.conv2d(x, weight, None, padding=1).contiguous(memory_format=fmt)  # (free: cuDNN keeps the layout)
        return _interleave_triton(y, bias, n, o, h, w)
    y = F.conv2d(x, weight, bias, padding=1)  # [N, 4·O, H + 1, W + 1]
    out = torch.empty((n, o, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=fmt)
    grid = out.unflatten(3, (w, 2)).unflatten(2, (h, 2))  # [N, O, H, 2, W, 2], a view
    for a in (0, 1):
        for b in (0, 1):
            phase = 2 * a + b
            grid[:, :, :, a, :, b] = y[:, phase * o:(phase + 1) * o, a:a + h, b:b + w]
    return out


def _interleave_triton(y: Tensor, bias: Tensor | None, n: int, o: int, h: int, w: int) -> Tensor:
    out = torch.empty((n, 2 * h, 2 * w, o), dtype=y.dtype, device=y.device)
    rows = out.numel() // o  # one row = one output pixel's O channels
    grid, blocks = tiling(rows, o)
    _build()[grid](y, bias if bias is not None else y, out, rows, 2 * h, 2 * w, o, HAS_BIAS=bias is not None,
                   **blocks)
    return out.permute(0, 3, 1, 2)  # channels-last [N, O, 2H, 2W]


@functools.cache
def _build():
    import triton
    import triton.language as tl

    @triton.jit
    def interleave_phases_rows(y_ptr, b_ptr, out_ptr, n_rows, out_h, out_w, channels,
                               HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr):
        # Output pixel (n, r, c) = phase (r % 2, c % 2) of the phase convolution at (r // 2 + r % 2, c // 2 + c % 2).
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
        cols = tl.arange(0, BLOCK_C)[None, :]
        mask = (rows < n_rows) & (cols < channels)
        c = rows % out_w
        r = (rows // out_w) % out_h
        image = rows // (out_w * out_h)
        a, b = r % 2, c % 2
        src = (image * (out_h // 2 + 1) + r // 2 + a) * (out_w // 2 + 1) + c // 2 + b
        lane = (2 * a + b) * channels + cols
        v = tl.load(y_ptr + src.to(tl.int64) * (4 * channels) + lane, mask=mask, other=0.0)
        if HAS_BIAS:  # conv, rounded, then + bias in float32, rounded: the eager convolution's bias add
            v = v.to(tl.float32) + tl.load(b_ptr + lane, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows.to(tl.int64) * channels + cols, v.to(out_ptr.dtype.element_ty), mask=mask)

    return interleave_phases_rows
