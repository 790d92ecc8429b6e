"""FP8 Linear layers (`cfcli.ops.fp8`) on the CPU: the emulated path's numerics, the DiT surgery, and the
`_scaled_mm` call checked against PyTorch's CUDA shape/layout rules on fake CUDA tensors."""

import copy

import pytest
import torch
from torch import nn

from cfcli.models.dit import CausalWanDiT, DiTConfig, hot_linear
from cfcli.ops.fp8 import (FP8_DTYPE, FP8Linear, fp8_dequantize, fp8_matmul_supported, fp8_quantize,
                           fp8_supported, quantize_fp8_)

from conftest import FIXTURES

TINY = DiTConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32, text_len=16)
PER_BLOCK = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.o", "ffn.0",
             "ffn.2"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def linear(k: int, n: int, dtype=torch.float32, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(k, n).to(dtype).requires_grad_(False)
    nn.init.normal_(lin.bias, std=0.1)
    return lin


def test_weight_round_trip_error_is_e4m3_sized():
    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(0)) * 0.02
    q, s = fp8_quantize(w)
    assert q.dtype == FP8_DTYPE and s.dtype == torch.float32 and s.dim() == 0
    assert torch.allclose(s, w.abs().max() / 448)
    back = fp8_dequantize(q, s)
    err = rel(back, w)
    assert 0 < err < 3e-2  # 3 mantissa bits: ≤ 2^-4 relative per element, ~2.6% RMS on Gaussian weights
    # element-wise: half a step of the element's binade, except near zero (subnormals) where it is absolute
    assert ((back - w).abs() <= torch.maximum(w.abs() * 2**-4, s * 2**-9) * 1.001).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_close_to_linear(dtype):
    lin = linear(256, 512, dtype)
    f = FP8Linear.from_linear(lin)
    assert not f._native  # CPU: the emulation
    assert f.weight.dtype == FP8_DTYPE and f.weight_scale.dtype == torch.float32 and f.bias.dtype == dtype
    x = torch.randn(3, 37, 256, dtype=dtype, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        ref, out = lin(x), f(x)
    assert out.shape == ref.shape and out.dtype == dtype
    assert 0 < rel(out, ref) < 5e-2
    assert not torch.equal(out, ref)


def test_emulation_matches_scaled_mm_semantics():
    """The emulation is exactly what `_scaled_mm` computes: (x8·s_x) @ (W8·s_w)ᵀ + b (checked by hand here, and
    against the CPU `_scaled_mm` where this PyTorch has one)."""
    lin = linear(128, 64)
    f = FP8Linear.from_linear(lin)
    x = torch.randn(20, 128, generator=torch.Generator().manual_seed(2))
    xq, sx = fp8_quantize(x)
    want = (xq.float() * sx) @ (f.weight.float() * f.weight_scale).t() + lin.bias
    with torch.no_grad():
        assert torch.allclose(f(x), want, rtol=1e-6, atol=1e-6)
        f._native = True  # the real call, on the CPU kernel if there is one
        try:
            got = f(x)
        except (RuntimeError, NotImplementedError) as e:  # pragma: no cover - PyTorch without a CPU _scaled_mm
            pytest.skip(f"no CPU _scaled_mm: {e}")
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_zero_weight_and_zero_input_are_finite():
    lin = linear(64, 32)
    nn.init.zeros_(lin.weight)
    f = FP8Linear.from_linear(lin)
    assert f.weight_scale.item() > 0
    out = f(torch.randn(5, 64))
    assert torch.isfinite(out).all() and torch.allclose(out, lin.bias.expand(5, -1))
    g = FP8Linear.from_linear(linear(64, 32))
    out = g(torch.zeros(2, 3, 64))
    assert torch.isfinite(out).all() and torch.allclose(out, g.bias.expand(2, 3, -1))
    assert g(torch.zeros(0, 64)).shape == (0, 32)


def test_dtype_casts_keep_the_fp8_weight():
    f = FP8Linear.from_linear(linear(64, 32))
    w, s = f.weight.clone(), f.weight_scale.clone()
    f.to(torch.bfloat16)
    assert f.weight.dtype == FP8_DTYPE and torch.equal(f.weight.view(torch.uint8), w.view(torch.uint8))
    assert f.weight_scale.dtype == torch.float32 and torch.equal(f.weight_scale, s)
    assert f.bias.dtype == torch.bfloat16
    f.float()
    assert f.weight.dtype == FP8_DTYPE and f.bias.dtype == torch.float32
    assert set(f.state_dict()) == {"weight", "weight_scale", "bias"}


def test_compiles_fullgraph():
    f = FP8Linear.from_linear(linear(64, 48))
    x = torch.randn(2, 7, 64)
    g = torch.compile(f, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(g(x), f(x))


def tiny_dit(seed: int = 0) -> CausalWanDiT:
    torch.manual_seed(seed)
    dit = CausalWanDiT(TINY).eval().requires_grad_(False)
    for blk in dit.blocks:  # non-zero modulation so that every path matters
        blk.modulation.normal_(0, 0.1)
    dit.head.modulation.normal_(0, 0.1)
    return dit


def test_quantize_dit_replaces_block_linears_only():
    dit = tiny_dit()
    before = {n for n, m in dit.named_modules() if isinstance(m, nn.Linear)}
    q = copy.deepcopy(dit)
    assert quantize_fp8_(q, hot_linear) == 8 * TINY.num_layers
    expected = {f"blocks.{i}.{name}" for i in range(TINY.num_layers) for name in PER_BLOCK}
    fp8 = {n for n, m in q.named_modules() if isinstance(m, FP8Linear)}
    assert fp8 == expected
    left = {n for n, m in q.named_modules() if isinstance(m, nn.Linear)}
    assert left == before - expected
    for name in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1",
                 "head.head", "blocks.0.cross_attn.k", "blocks.1.cross_attn.v"):
        assert name in left
    assert quantize_fp8_(q, hot_linear) == 0  # already converted
    assert hot_linear("blocks.12.ffn.2", None) and not hot_linear("blocks.3.cross_attn.k", None)
    assert not hot_linear("head.head", None) and not hot_linear("blocks.3.ffn.1", None)

    x = torch.randn(1, 2, TINY.in_dim, 4, 6, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([[700.0, 500.0]])
    ctx = torch.randn(1, 10, TINY.text_dim, generator=torch.Generator().manual_seed(2))
    ref = dit(x, t, dit.text_kv(ctx), cache=None, start_frame=0)
    out = q(x, t, q.text_kv(ctx), cache=None, start_frame=0)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert 0 < rel(out, ref) < 5e-2


def test_quantize_custom_filter_and_alignment():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 24), nn.Linear(24, 16))
    assert quantize_fp8_(model, lambda name, m: True) == 1  # 32->24 and 24->16 are not multiples of 16
    assert isinstance(model[0], FP8Linear) and type(model[2]) is nn.Linear and type(model[3]) is nn.Linear


def test_fp8_supported_on_cpu_says_why():
    ok, why = fp8_supported("cpu")
    assert not ok and "8.9" in why and "cpu" in why
    assert not fp8_matmul_supported(torch.device("cpu"))


def test_scaled_mm_call_passes_cuda_layout_checks():
    """Run the `_scaled_mm` path on fake CUDA tensors: PyTorch's meta function enforces the CUDA rules (row-major
    self, column-major mat2, K and N multiples of 16, float32 scalar scales) without a GPU. A row count that is not
    a multiple of 16 (1557) is accepted."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        f = FP8Linear(1536, 8960, device="cuda", dtype=torch.bfloat16)  # (nn.Linear's random init can't run here)
        f._native = True
        x = torch.empty(1, 3, 519, 1536, device="cuda", dtype=torch.bfloat16)
        y = f(x)
        assert y.shape == (1, 3, 519, 8960) and y.dtype == torch.bfloat16 and y.device.type == "cuda"
        with pytest.raises(RuntimeError, match="col_major"):  # the check is live: a row-major mat2 fails
            torch._scaled_mm(torch.empty(32, 1536, device="cuda", dtype=FP8_DTYPE),
                             torch.empty(1536, 8960, device="cuda", dtype=FP8_DTYPE),
                             scale_a=f.weight_scale, scale_b=f.weight_scale, out_dtype=torch.bfloat16)


def test_fp8_off_an_fp8_gpu_is_refused_before_anything_loads(cf, tmp_path):
    out = tmp_path / "v.mp4"
    r = cf("generate", "a fox", "--preset", FIXTURES / "tiny-framewise.yaml", "--device", "cpu", "--quantize", "fp8",
           "--out", out)
    assert r.exit_code == 1 and "compute capability 8.9" in r.output and not out.exists()
    r = cf("bench", "--preset", FIXTURES / "tiny-framewise.yaml", "--device", "cpu", "--quantize", "int4")
    assert r.exit_code == 1 and "unknown quantization 'int4'" in r.output
