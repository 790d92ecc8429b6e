"""A Linear layer followed by the tanh-approximated GELU (the DiT's FFN up-projection), in one GEMM on GPUs.

On CUDA in half precision `torch._addmm_activation(..., use_gelu=True)` runs cuBLASLt's GELU + bias epilogue: the
activation is applied to the float32 accumulator and rounded once, instead of a rounded GEMM output followed by a
separate pass over [tokens, ffn_dim] (timed in docs/performance.md). The epilogue's
GELU is the tanh approximation, as the model's `nn.GELU(approximate="tanh")`. The caller chooses it
(`cfcli.models.dit.Block.fused_gelu`); other devices and dtypes run the two ops as written, in the model.
"""

import torch
from torch import Tensor


def linear_gelu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """GELU_tanh(x · weightᵀ + bias) for x [..., in], weight [out, in], bias [out] -> [..., out]."""
    if not (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)):
        # (the CPU's `_addmm_activation` computes the erf GELU: a silent wrong answer, so refused)
        raise ValueError(f"linear_gelu runs cuBLASLt's epilogue: half precision on CUDA, got {x.dtype} on {x.device}")
    y = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t(), use_gelu=True)
    return y.view(*x.shape[:-1], weight.shape[0])
