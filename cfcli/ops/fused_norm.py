"""Two elementwise passes of the Wan VAE decoder, each as one GPU kernel over a channels-last activation (Triton).

- `norm_silu`: SiLU(RMS norm over channels) of a convolution's output plus its bias. As PyTorch ops that is seven
  passes over activations of up to 300 MB (bias, norm, clamp, divide, two scalings, SiLU); this reads each pixel's
  channels once, works in float32 and writes the result once.
- `add_bias_residual_`: a residual block's output `h + bias + shortcut`, in place, in one pass instead of two.

Each pixel's channels are contiguous in the channels-last layout, so a pixel is one row of a [pixels, channels]
matrix. The convolutions before them run without bias (`CausalConv3d.convolve`) so that the bias rides along here.
"""

import functools

import torch
from torch import Tensor

from cfcli.ops.triton_rows import tiling


def norm_silu(x: Tensor, weight: Tensor, bias: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """SiLU(y / max(‖y‖₂ over dim 1, 1e-12) · weight), y = x + bias, for x [B, C, *spatial] on CUDA; weight [C] float32
    (the norm's gamma times its √C scale), bias [C] or None. Returns a channels-last tensor of x's dtype: `out` if
    given (channels-last, x's shape; a view into a larger buffer is fine), else a new one."""
    x = _rows(x)
    if out is None:
        # Canonical channels-last strides: `x` may be a frame of ambiguous strides (size-1 dims), which later ops
        # read as channels-first and convert.
        out = torch.empty_like(x, memory_format=_format(x))
    elif out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous(memory_format=_format(out)):
        raise ValueError(f"norm_silu writes whole rows: out must be channels-last {list(x.shape)} {x.dtype}")
    _launch(_build()[0], x, (x, weight, bias if bias is not None else weight, out), HAS_BIAS=bias is not None)
    return out


def add_bias_residual_(h: Tensor, bias: Tensor, shortcut: Tensor) -> Tensor:
    """h += bias + shortcut in one pass (float32 sums, one rounding), for channels-last h [B, C, *spatial] on CUDA."""
    if not h.is_contiguous(memory_format=_format(h)):
        raise ValueError("add_bias_residual_ writes in place: h must be channels-last")
    _launch(_build()[1], h, (h, bias, _rows(shortcut)))
    return h


def _format(x: Tensor) -> torch.memory_format:
    return torch.channels_last_3d if x.dim() == 5 else torch.channels_last


def _rows(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=_format(x))  # free when already so


def _launch(kernel, like: Tensor, tensors: tuple[Tensor, ...], **flags) -> None:
    c = like.shape[1]
    rows = like.numel() // c
    grid, blocks = tiling(rows, c)
    kernel[grid](*tensors, rows, c, **blocks, **flags)


@functools.cache
def _build():
    import triton
    import triton.language as tl

    @triton.jit
    def norm_silu_rows(x_ptr, w_ptr, b_ptr, out_ptr, n_rows, n_cols,
                       HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
        cols = tl.arange(0, BLOCK_C)[None, :]
        mask = (rows < n_rows) & (cols < n_cols)
        offsets = rows.to(tl.int64) * n_cols + cols
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x = x + tl.load(b_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        norm = tl.sqrt(tl.sum(x * x, axis=1))[:, None]
        y = x / tl.maximum(norm, 1e-12) * tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0)
        y = y / (1.0 + tl.exp(-y))
        tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def bias_residual_rows(h_ptr, b_ptr, r_ptr, n_rows, n_cols, BLOCK_C: tl.constexpr, ROWS: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
        cols = tl.arange(0, BLOCK_C)[None, :]
        mask = (rows < n_rows) & (cols < n_cols)
        offsets = rows.to(tl.int64) * n_cols + cols
        h = tl.load(h_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        h += tl.load(b_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        h += tl.load(r_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(h_ptr + offsets, h.to(h_ptr.dtype.element_ty), mask=mask)

    return norm_silu_rows, bias_residual_rows
