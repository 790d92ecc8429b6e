"""A Linear layer followed by the tanh-approximated GELU (the DiT's FFN up-projection), in one GEMM on GPUs.

On CUDA in half precision `torch._addmm_activation(..., use_gelu=True)` runs cuBLASLt's GELU + bias epilogue: the
activation is applied to the float32 accumulator and rounded once, instead of a rounded GEMM output followed by a
separate pass over [tokens, ffn_dim] (timed in docs/performance.md). The epilogue's
GELU is the tanh approximation, as the model's `nn.GELU(approximate="tanh")`. The caller chooses it
(`cfcli.models.dit.Block.fused_gelu`); other devices and dtypes run the two ops as written, in the model.

Also what the quantised Linears (`cfcli.ops.fp8`, `cfcli.ops.weight_quant`) share: swapping them in
(`replace_linears_`) and keeping their dtypes through `.to(dtype)` (`keeping_dtype`).
"""

from collections.abc import Callable

import torch
from torch import Tensor, nn


def linear_gelu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """GELU_tanh(x · weightᵀ + bias) for x [..., in], weight [out, in], bias [out] -> [..., out]."""
    if not (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)):
        # (the CPU's `_addmm_activation` computes the erf GELU: a silent wrong answer, so refused)
        raise ValueError(f"linear_gelu runs cuBLASLt's epilogue: half precision on CUDA, got {x.dtype} on {x.device}")
    y = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t(), use_gelu=True)
    return y.view(*x.shape[:-1], weight.shape[0])


def keeping_dtype(fn: Callable[[Tensor], Tensor], *tensors: Tensor) -> Callable[[Tensor], Tensor]:
    """`fn` (what `nn.Module._apply` maps over a module's tensors) leaving the dtype of `tensors` as it is: `.to(dtype)`,
    `.half()`, `.bfloat16()` would cast a quantised weight and its float32 scales like any float tensor. Device moves
    and `to_empty` still apply to them."""
    keep = {id(t) for t in tensors}

    def apply(t: Tensor) -> Tensor:
        out = fn(t)
        return t.to(device=out.device) if id(t) in keep and out.dtype != t.dtype else out

    return apply


def replace_linears_(module: nn.Module, chosen_by: Callable[[str, nn.Linear], bool],
                     make: Callable[[nn.Linear], nn.Module]) -> int:
    """Replace, in place, every `nn.Linear` of `module` that `chosen_by(qualified_name, linear)` picks by
    `make(linear)` (a quantised form); returns how many. Converted layers are no `nn.Linear`s: a second call
    replaces nothing."""
    chosen = [(name, m) for name, m in module.named_modules()
              if name and isinstance(m, nn.Linear) and chosen_by(name, m)]
    for name, linear in chosen:
        parent, _, attr = name.rpartition(".")
        with torch.no_grad():
            setattr(module.get_submodule(parent), attr, make(linear))
    return len(chosen)
