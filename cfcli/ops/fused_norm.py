"""SiLU(RMS norm over channels) of a channels-last video activation in one GPU pass (Triton).

The Wan VAE decoder follows every RMS norm with a SiLU. Run as PyTorch ops that is six passes over activations of
up to 300 MB (norm, clamp, divide, two scalings, SiLU); this kernel reads each pixel's channels once, works in
float32 and writes the result once. Each pixel's channels are contiguous in the channels-last layout, so a pixel is
one row of a [pixels, channels] matrix.
"""

import torch
from torch import Tensor

_KERNEL = None


def available(x: Tensor) -> bool:
    """True where the Triton kernel can run on x (a CUDA tensor, Triton installed)."""
    if not x.is_cuda:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def norm_silu(x: Tensor, weight: Tensor, eps: float = 1e-12) -> Tensor:
    """SiLU(x / max(‖x‖₂ over dim 1, eps) · weight) for x [B, C, *spatial] on CUDA; weight [C] float32 (the norm's
    gamma times its √C scale). Returns a channels-last tensor of x's dtype."""
    kernel = _kernel()
    fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    x = x.contiguous(memory_format=fmt)
    out = torch.empty_like(x, memory_format=fmt)
    c = x.shape[1]
    rows = x.numel() // c
    block_c = 1 << (c - 1).bit_length()
    per_program = max(1, 4096 // block_c)
    grid = ((rows + per_program - 1) // per_program,)
    kernel[grid](x, weight, out, rows, c, eps, BLOCK_C=block_c, ROWS=per_program)
    return out


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build()
    return _KERNEL


def _build():
    import triton
    import triton.language as tl

    @triton.jit
    def norm_silu_rows(x_ptr, w_ptr, out_ptr, n_rows, n_cols, eps, BLOCK_C: tl.constexpr, ROWS: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
        cols = tl.arange(0, BLOCK_C)[None, :]
        mask = (rows < n_rows) & (cols < n_cols)
        offsets = rows.to(tl.int64) * n_cols + cols
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        norm = tl.sqrt(tl.sum(x * x, axis=1))[:, None]
        y = x / tl.maximum(norm, eps) * tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0)
        y = y / (1.0 + tl.exp(-y))
        tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)

    return norm_silu_rows
