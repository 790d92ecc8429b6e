"""Weight-only int8 Linear layers: the DiT's block linears stored in 8 bits, computed in the activation dtype.

Per output channel (row of the [out, in] weight): `s = amax(|W_row|) / 127`, `W8 = round(W_row / s)` as int8. A call
casts W8 to the input dtype, runs the ordinary matmul and scales the output columns: `y = (x · W8ᵀ) · s + b`, which is
`x · (W8·s)ᵀ + b` with the scale moved past the sum (one multiply per output instead of per weight). Activations are
not quantised, so the only error is the weights' rounding (≤ s/2 per weight).

Why not torchao's `Int8WeightOnlyConfig`: its kernels are tied to matching torch/torchao builds (torch 2.11 on the GPU
box, 2.13 on CPU here); these 40 lines run the same scheme on both with stock ops. Used by the `low` memory plans
(`cfcli.pipeline.memory`): the DiT's weights take half the memory of bf16.
"""

from collections.abc import Callable

import torch
from torch import Tensor, nn

from cfcli.ops.linear import keeping_dtype, replace_linears_

INT8_MAX = 127.0


def quantize_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 weight, float32 scale per row [out]) of a [out, in] weight; an all-zero row gets scale 1."""
    amax = w.float().abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    q = (w.float() / scale[:, None]).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """Drop-in for an inference `nn.Linear`: int8 weight [out, in] and float32 row scales as buffers, bias kept."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight", q)
        self.register_buffer("weight_scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @torch.no_grad()
    def assign_(self, weight: Tensor) -> None:
        """Take `weight` [out, in] (a float weight, e.g. a LoRA merged into it) as construction would, in place: the
        buffers keep their storage, so captured CUDA graphs stay valid."""
        q, scale = quantize_rows(weight)
        self.weight.copy_(q)
        self.weight_scale.copy_(scale)

    def _apply(self, fn, recurse=True):
        return super()._apply(keeping_dtype(fn, self.weight, self.weight_scale), recurse)  # int8 / float32 kept

    def forward(self, x: Tensor) -> Tensor:
        y = torch.nn.functional.linear(x, self.weight.to(x.dtype))
        y = (y * self.weight_scale).to(x.dtype)  # the float32 scale: a bf16 one would be off by up to 2⁻⁹ a channel
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


def quantize_int8_(module: nn.Module, chosen_by: Callable[[str, nn.Module], bool]) -> int:
    """Replace, in place, the `nn.Linear`s that `chosen_by(name, module)` picks by `Int8Linear`s; returns how many.
    (The model knows which: for the DiT, `cfcli.models.dit.block_linear`.)"""
    return replace_linears_(module, chosen_by, Int8Linear)
