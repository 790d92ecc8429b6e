"""Scaled dot-product attention on [B, N, heads, head_dim] tensors, with one place that picks the kernel.

On CUDA the cuDNN and flash kernels of `F.scaled_dot_product_attention` are preferred (cuDNN is the fastest at
the DiT's shapes on Hopper); everywhere else PyTorch chooses. No masks: the causal structure of the sampler comes
from what is in the KV cache.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

_BACKENDS: list | None = None


def backend_names() -> list[str]:
    """The SDPA backends attention may use on this machine, in order of preference (shown by `cf bench`)."""
    return [b.name.lower() for b in _preferred()]


def _preferred() -> list:
    global _BACKENDS
    if _BACKENDS is None:
        from torch.nn.attention import SDPBackend

        _BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                     SDPBackend.MATH]
    return _BACKENDS


def attend(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """softmax(q·kᵀ·scale)·v per head; q [B, Nq, H, D], k/v [B, Nk, H, D] -> [B, Nq, H, D]."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    ctx = contextlib.nullcontext()
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from torch.nn.attention import sdpa_kernel

        ctx = sdpa_kernel(_preferred(), set_priority=True)
    with ctx:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return out.transpose(1, 2)
