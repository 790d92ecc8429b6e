"""Opt-in FP8 Linear layers: dynamic per-tensor float8 (e4m3) activations × per-tensor float8 weights.

The scheme of torchao's `Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor())`, written out here:

- weight (once, at `quantize_fp8_` time): `s_w = amax(|W|) / 448`, `W8 = clamp(W / s_w, ±448).to(float8_e4m3fn)`;
- activation (every call, on the device): `s_x = amax(|x|) / 448`, `x8 = clamp(x / s_x, ±448).to(float8_e4m3fn)`;
- `y = torch._scaled_mm(x8, W8.t(), scale_a=s_x, scale_b=s_w, bias=b, out_dtype=x.dtype)`, i.e.
  `y = (x8·s_x) @ (W8·s_w)ᵀ + b`, accumulated in float32 by cuBLASLt and written in the input's dtype.

The scales are float32 0-dim tensors on the device (`_scaled_mm`'s "tensorwise" recipe needs `numel() == 1` and
float32); an all-zero tensor gets `amax` clamped to `AMAX_EPS` so the scale is never 0 (no 0/0 NaN). Nothing reads a
value back to the host, so a call can be captured in a CUDA graph and traced by `torch.compile(fullgraph=True)`.

`torch._scaled_mm` constraints (CUDA, torch 2.11+: `aten/src/ATen/native/cuda/ScaledBlas.cpp` `_scaled_mm_out_cuda`
and `torch/_meta_registrations.py` `_check_scaled_mm_sizes`): both operands 2-D float8; `self` row-major, `mat2`
column-major (hence the transposed view of the row-major [out, in] weight); `self.size(1)` (K) and both dims of `mat2`
(K, N) multiples of 16 -- the row count M is free, so token counts that are not multiples of 16 need no padding;
`bias` bfloat16 for a bfloat16 output (float16 for float16) and not allowed with a float32 output (added afterwards
then); compute capability 8.9 or 9.0+. Layers whose in/out features are not multiples of 16 are left alone by
`quantize_fp8_` (an `FP8Linear` built from one anyway runs the emulation).

Where there is no FP8 matmul (CPU, older GPUs) `FP8Linear` runs an emulation with the same quantise -> dequantise
math and a float32 matmul, cast to the input dtype: the same numbers up to accumulation order (and, with
`use_fast_accum`, Hopper's reduced-precision FP8 accumulation, which only the GPU has).

Inference only: `_scaled_mm` has no backward. Quantise after the checkpoint is loaded (the state dict of a quantised
model holds `weight` as float8 plus `weight_scale`). `model.to(dtype)` leaves the float8 weight and its float32 scale
alone (only the bias follows); device moves work as usual.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from cfcli.ops.linear import keeping_dtype, replace_linears_

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
AMAX_EPS = 1e-12  # amax floor: an all-zero tensor gets a tiny non-zero scale instead of a 0/0
_NEED = "FP8 needs an NVIDIA GPU of compute capability 8.9+ (Ada/Hopper or newer)"


# -- capability -------------------------------------------------------------------------------------------------------

def fp8_supported(device: torch.device | str | None = None) -> tuple[bool, str]:
    """(whether `device` can run `torch._scaled_mm` in float8, a sentence saying why or what it is).

    `device` None means the current CUDA device (or the CPU when there is none). The reason is meant for the user:
    "FP8 needs an NVIDIA GPU of compute capability 8.9+ (Ada/Hopper or newer); this is NVIDIA A100 (compute
    capability 8.0)".
    """
    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type != "cuda":
        return False, f"{_NEED}; this is the {device.type} device"
    if getattr(torch.version, "hip", None):
        return False, f"{_NEED}; this PyTorch is a ROCm build (AMD GPUs are not supported by this FP8 path)"
    if not torch.cuda.is_available():
        return False, f"{_NEED}; this PyTorch ({torch.__version__}) sees no CUDA GPU"
    index = device.index if device.index is not None else torch.cuda.current_device()
    name = torch.cuda.get_device_name(index)
    major, minor = torch.cuda.get_device_capability(index)
    what = f"{name} (compute capability {major}.{minor})"
    if (major, minor) < (8, 9):
        return False, f"{_NEED}; this is {what}"
    return True, what


_SUPPORTED: dict[tuple[str, int | None], bool] = {}


def fp8_matmul_supported(device: torch.device | str | None) -> bool:
    """Whether `device` has a native FP8 matmul (CUDA, compute capability ≥ 8.9); memoised per device."""
    device = torch.device(device) if device is not None else None
    key = (device.type, device.index) if device is not None else ("default", None)
    if key not in _SUPPORTED:
        _SUPPORTED[key] = fp8_supported(device)[0]
    return _SUPPORTED[key]


def fp8_shape_ok(in_features: int, out_features: int) -> bool:
    """`_scaled_mm` needs K (in) and N (out) to be multiples of 16."""
    return in_features % 16 == 0 and out_features % 16 == 0


# -- tensor quantisation ----------------------------------------------------------------------------------------------

def fp8_scale(t: Tensor) -> Tensor:
    """Per-tensor scale amax(|t|)/448 as a float32 0-dim tensor on t's device (no host sync)."""
    lo, hi = torch.aminmax(t)  # one pass, no |t| temporary
    amax = torch.maximum(hi.float(), lo.float().neg())
    return amax.clamp(min=AMAX_EPS) / FP8_MAX


def fp8_quantize(t: Tensor, scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(clamp(t / scale, ±448) as float8_e4m3fn, scale); the scale is `fp8_scale(t)` unless given."""
    if scale is None:
        scale = fp8_scale(t)
    q = (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def fp8_dequantize(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    return (q.float() * scale).to(dtype)


def _emulated_mm(xq: Tensor, sx: Tensor, wq: Tensor, sw: Tensor, bias: Tensor | None, out_dtype: torch.dtype,
                 ) -> Tensor:
    """(x8·s_x) @ (W8·s_w)ᵀ + b in float32, cast to `out_dtype`: `_scaled_mm`'s math on any device."""
    y = (xq.float() * sx) @ (wq.float() * sw).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def _scaled_mm(xq: Tensor, sx: Tensor, wq: Tensor, sw: Tensor, bias: Tensor | None, out_dtype: torch.dtype,
               use_fast_accum: bool) -> Tensor:
    """x8 [M, K] row-major × W8 [N, K] row-major (passed as its column-major transpose) -> [M, N] in `out_dtype`."""
    fused = bias is not None and out_dtype in (torch.bfloat16, torch.float16)  # _scaled_mm's bias rules
    y = torch._scaled_mm(xq, wq.t(), scale_a=sx, scale_b=sw, bias=bias.to(out_dtype) if fused else None,
                         out_dtype=out_dtype, use_fast_accum=use_fast_accum)
    if bias is not None and not fused:
        y = y + bias.to(out_dtype)
    return y


# -- the module -------------------------------------------------------------------------------------------------------

class FP8Linear(nn.Module):
    """Drop-in for an inference `nn.Linear`: float8 weight with a per-tensor scale, dynamic per-tensor float8 input.

    Buffers: `weight` [out, in] float8_e4m3fn (row-major), `weight_scale` float32 0-dim; `bias` stays a parameter in
    the original dtype. Any leading input dims are flattened to rows and restored. The path is chosen when the
    module is built or moved (`_apply`): `torch._scaled_mm` on a CUDA device of compute capability ≥ 8.9 with
    in/out features multiples of 16, otherwise the emulation (`emulate=True` forces it, e.g. to compare on a GPU).
    `use_fast_accum` (default on, as torchao's config) lets Hopper accumulate FP8 products at reduced precision.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None,
                 dtype: torch.dtype = torch.bfloat16, use_fast_accum: bool = True, emulate: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.use_fast_accum = use_fast_accum
        self._emulate = emulate
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=FP8_DTYPE, device=device))
        self.register_buffer("weight_scale", torch.ones((), dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None
        self._update_path()

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, use_fast_accum: bool = True, emulate: bool = False) -> "FP8Linear":
        """Quantise `linear`'s weight once (on its device); the bias is kept as it is."""
        w = linear.weight.detach()
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta", dtype=w.dtype,
                use_fast_accum=use_fast_accum, emulate=emulate)
        q, s = fp8_quantize(w)
        m.weight, m.weight_scale = q, s  # registered buffers: plain assignment replaces them
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        m._update_path()
        return m

    @torch.no_grad()
    def assign_(self, weight: Tensor) -> None:
        """Take `weight` [out, in] (a LoRA merged into it, say) as `from_linear` would, in place: the buffers keep
        their storage, so captured CUDA graphs stay valid."""
        q, scale = fp8_quantize(weight.to(self.weight.device))
        self.weight.copy_(q)
        self.weight_scale.copy_(scale)

    @property
    def emulate(self) -> bool:
        return self._emulate

    @emulate.setter
    def emulate(self, value: bool) -> None:
        self._emulate = value
        self._update_path()

    def _update_path(self) -> None:
        # A plain bool read by `forward`, so torch.compile guards on it instead of tracing a capability query.
        self._native = (not self._emulate and fp8_shape_ok(self.in_features, self.out_features)
                        and self.weight.device.type == "cuda" and fp8_matmul_supported(self.weight.device))

    def _apply(self, fn, recurse=True):
        super()._apply(keeping_dtype(fn, self.weight, self.weight_scale), recurse)  # float8 / float32 kept
        self._update_path()
        return self

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] == 0:  # an empty input has no amax
            return x.new_zeros(*lead, self.out_features)
        xq, sx = fp8_quantize(x2)
        if self._native:
            y = _scaled_mm(xq.contiguous(), sx, self.weight, self.weight_scale, self.bias, x.dtype,
                           self.use_fast_accum)
        else:
            y = _emulated_mm(xq, sx, self.weight, self.weight_scale, self.bias, x.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        path = "_scaled_mm" if self._native else "emulated"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"path={path}, use_fast_accum={self.use_fast_accum}")


# -- model surgery ----------------------------------------------------------------------------------------------------

def quantize_fp8_(module: nn.Module, filter: Callable[[str, nn.Linear], bool], *, use_fast_accum: bool = True,
                  emulate: bool = False) -> int:
    """Replace, in place, every `nn.Linear` of `module` that `filter(qualified_name, linear)` selects (the model knows
    which: e.g. `cfcli.models.dit.hot_linear`) and whose in/out features are multiples of 16 by an `FP8Linear`;
    returns how many.

    Quantises on the layers' current device. Run it after the weights are loaded and before `torch.compile` /
    CUDA-graph capture. Layers already converted are not `nn.Linear`s, so a second call replaces nothing.
    """
    return replace_linears_(module, lambda name, m: fp8_shape_ok(m.in_features, m.out_features) and filter(name, m),
                            lambda m: FP8Linear.from_linear(m, use_fast_accum=use_fast_accum, emulate=emulate))
