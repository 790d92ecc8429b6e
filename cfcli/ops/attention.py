"""Scaled dot-product attention on [B, N, heads, head_dim] tensors; the caller may name the SDPA kernels to prefer.

PyTorch chooses the kernel unless `backends` is given: the DiT's `cudnn_attention` lever passes `preferred_backends()`
(cuDNN first: the fastest at the DiT's shapes on Hopper). No masks: the causal structure of the sampler comes from
what is in the KV cache.
"""

import contextlib

import torch.nn.functional as F
from torch import Tensor

_BACKENDS: list | None = None


def backend_names() -> list[str]:
    """The SDPA backends of `preferred_backends`, in order (shown by `cf bench`)."""
    return [b.name.lower() for b in preferred_backends()]


def preferred_backends() -> list:
    global _BACKENDS
    if _BACKENDS is None:
        from torch.nn.attention import SDPBackend

        _BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                     SDPBackend.MATH]
    return _BACKENDS


def attend(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, backends: list | None = None) -> Tensor:
    """softmax(q·kᵀ·scale)·v per head; q [B, Nq, H, D], k/v [B, Nk, H, D] -> [B, Nq, H, D]. `backends`: the SDPA
    kernels to try first, in order (half precision on CUDA; `preferred_backends`); None lets PyTorch choose."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    ctx = contextlib.nullcontext()
    if backends:
        from torch.nn.attention import sdpa_kernel

        ctx = sdpa_kernel(backends, set_priority=True)
    with ctx:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return out.transpose(1, 2)
