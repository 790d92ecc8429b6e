"""The GPU kernels of `cfcli.ops` against the plain ops they replace: time-tap stacking (`time_taps`), sub-pixel
upsampling (`subpixel`), the fused norm + SiLU and bias + residual (`fused_norm`), the Linear + GELU epilogue
(`linear`) and split-KV attention (`split_attention`).

Each kernel's torch form (the one the CPU runs) is checked here; the Triton and cuDNN forms where CUDA is present.
"""

import pytest
import torch

from conftest import rel_err

CUDA = torch.cuda.is_available()


def test_stack_taps_puts_frame_t_plus_j_in_channel_block_j():
    from cfcli.ops.time_taps import stack_taps

    past = torch.arange(2.0).view(1, 1, 2, 1, 1).expand(1, 3, 2, 2, 2)
    x = torch.arange(2.0, 5.0).view(1, 1, 3, 1, 1).expand(1, 3, 3, 2, 2)
    out, tail = stack_taps(past, x)  # [3 frames, 3 taps x 3 channels, 2, 2]
    assert out.shape == (3, 9, 2, 2) and out.is_contiguous(memory_format=torch.channels_last)
    assert out[:, :, 0, 0].tolist() == [[t + j for j in range(3) for _ in range(3)] for t in range(3)]
    assert tail[0, 0, :, 0, 0].tolist() == [3.0, 4.0]


@pytest.mark.skipif(not CUDA, reason="the stacking kernel is Triton on CUDA")
@pytest.mark.parametrize("shape", [(1, 96, 4, 24, 40), (2, 20, 1, 8, 8), (1, 8, 2, 5, 3)])
def test_triton_stack_taps_copies_exactly_what_the_torch_one_does(shape):
    from cfcli.ops import time_taps

    b, c, t, h, w = shape
    fmt = torch.channels_last_3d
    past = torch.randn(b, c, 2, h, w, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=fmt)
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=fmt)
    got, got_tail = time_taps.stack_taps(past, x)
    want, want_tail = time_taps.stack_taps(past.cpu(), x.cpu())
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got.cpu(), want)
    assert got_tail.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(got_tail.cpu(), want_tail)


def test_stack_taps_with_a_norm_stacks_the_normalised_new_frames_and_keeps_the_past():
    from cfcli.models.vae import per_channel, rms_norm_silu
    from cfcli.ops.time_taps import stack_taps

    torch.manual_seed(0)
    past, x = torch.randn(1, 6, 2, 3, 4), torch.randn(1, 6, 3, 3, 4)
    gamma, bias = torch.rand(6, 1, 1, 1) + 0.5, torch.randn(6)
    got, got_tail = stack_taps(past, x, norm=((gamma * 6**0.5).flatten(), bias))
    want, want_tail = stack_taps(past, rms_norm_silu(x + per_channel(bias, x), gamma, 6**0.5))
    assert rel_err(got, want) < 1e-6 and rel_err(got_tail, want_tail) < 1e-6
    assert torch.equal(got[0, :12], torch.cat([past[0, :, 0], past[0, :, 1]]))  # the past as it was


@pytest.mark.skipif(not CUDA, reason="the stacking kernel is Triton on CUDA")
@pytest.mark.parametrize("with_bias", [False, True])
def test_triton_stack_taps_with_a_norm_equals_the_fused_norm_then_stacking(with_bias):
    from cfcli.ops import time_taps
    from cfcli.ops.fused_norm import norm_silu

    fmt = torch.channels_last_3d
    past = torch.randn(1, 96, 2, 24, 40, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=fmt)
    x = torch.randn(1, 96, 4, 24, 40, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=fmt)
    weight = torch.rand(96, device="cuda") + 0.5
    bias = torch.randn(96, device="cuda", dtype=torch.bfloat16) if with_bias else None
    got, got_tail = time_taps.stack_taps(past, x, norm=(weight, bias))
    want, want_tail = time_taps.stack_taps(past, norm_silu(x, weight, bias))
    assert torch.equal(got, want) and torch.equal(got_tail, want_tail)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_subpixel_upsample_conv_equals_nearest_upsampling_then_the_3x3_conv(layout):
    from cfcli.ops.subpixel import phase_weights, upsample_conv

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 4, 3, padding=1).double()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64).contiguous(memory_format=layout)
    want = conv(torch.nn.Upsample(scale_factor=2.0, mode="nearest")(x))
    weight, bias = phase_weights(conv.weight.detach().contiguous(memory_format=layout), conv.bias.detach())
    got = upsample_conv(x, weight, bias)
    assert weight.shape == (16, 6, 2, 2) and got.shape == want.shape == (2, 4, 10, 14)
    assert got.is_contiguous(memory_format=layout) and (got - want).abs().max() < 1e-12  # borders included
    with pytest.raises(ValueError, match="3×3"):
        phase_weights(torch.zeros(4, 6, 1, 1), None)


@pytest.mark.skipif(not CUDA, reason="the interleaving kernel is Triton on CUDA")
@pytest.mark.parametrize("with_bias", [False, True])
def test_triton_subpixel_interleave_equals_the_copies(with_bias):
    from cfcli.ops import subpixel

    conv = torch.nn.Conv2d(96, 48, 3, padding=1).cuda().to(torch.bfloat16)
    x = torch.randn(3, 96, 7, 10, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    weight, bias = subpixel.phase_weights(conv.weight.detach().contiguous(memory_format=torch.channels_last),
                                          conv.bias.detach() if with_bias else None)
    got = subpixel.upsample_conv(x, weight, bias)
    y = torch.nn.functional.conv2d(x, weight, None, padding=1)  # the phases, [3, 4·48, 8, 11]
    want = torch.empty(3, 48, 14, 20, device="cuda", dtype=torch.bfloat16)
    for a in (0, 1):
        for b in (0, 1):
            phase = y[:, (2 * a + b) * 48:(2 * a + b + 1) * 48, a:a + 7, b:b + 10]
            want[:, :, a::2, b::2] = phase if bias is None else phase + bias[:48].view(-1, 1, 1)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.shape == (3, 48, 14, 20)
    assert torch.equal(got, want)


@pytest.mark.skipif(not CUDA, reason="the fused kernel is Triton on CUDA")
@pytest.mark.parametrize("shape", [(1, 96, 4, 24, 40), (1, 384, 1, 6, 10), (2, 20, 3, 8, 8)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_norm_silu_matches_the_eager_ops(shape, with_bias):
    from cfcli.models.vae import per_channel, rms_norm_silu
    from cfcli.ops.fused_norm import norm_silu

    x = torch.randn(shape, device="cuda").contiguous(memory_format=torch.channels_last_3d)
    gamma = torch.rand(shape[1], 1, 1, 1, device="cuda") + 0.5
    bias = torch.randn(shape[1], device="cuda") if with_bias else None
    scale = shape[1] ** 0.5
    want = rms_norm_silu(x + per_channel(bias, x) if with_bias else x.clone(), gamma, scale)
    got = norm_silu(x, (gamma * scale).flatten(), bias)
    assert got.is_contiguous(memory_format=torch.channels_last_3d)
    assert rel_err(got, want) < 1e-6
    # Into the frames after a 2-frame past of a larger buffer (the causal convolution's joined input), per video.
    b, c, t, h, w = shape
    joined = torch.zeros(b, c, 2 + t, h, w, device="cuda").contiguous(memory_format=torch.channels_last_3d)
    for i in range(b):
        norm_silu(x[i:i + 1], (gamma * scale).flatten(), bias, out=joined[i:i + 1, :, 2:])
    assert torch.equal(joined[:, :, 2:], got) and not joined[:, :, :2].any()
    with pytest.raises(ValueError, match="channels-last"):
        norm_silu(x, (gamma * scale).flatten(), bias, out=torch.empty(shape, device="cuda"))


@pytest.mark.skipif(not CUDA, reason="the fused kernel is Triton on CUDA")
def test_fused_bias_residual_add_matches_the_eager_ops():
    from cfcli.ops.fused_norm import add_bias_residual_

    fmt = torch.channels_last_3d
    h = torch.randn(1, 96, 4, 24, 40, device="cuda").contiguous(memory_format=fmt)
    r = torch.randn(1, 96, 4, 24, 40, device="cuda").contiguous(memory_format=fmt)
    bias = torch.randn(96, device="cuda")
    want = h + bias.view(-1, 1, 1, 1) + r
    got = add_bias_residual_(h, bias, r)
    assert got is h and rel_err(got, want) < 1e-6
    with pytest.raises(ValueError, match="channels-last"):
        add_bias_residual_(torch.randn(1, 96, 2, 4, 4, device="cuda"), bias, r[:, :, :2, :4, :4])


def test_linear_gelu_refuses_what_its_epilogue_cannot_compute():
    """Off CUDA `_addmm_activation` computes the erf GELU: refused rather than a silently different FFN (the DiT keeps
    its Linear and tanh `nn.GELU` there)."""
    from cfcli.ops.linear import linear_gelu

    up = torch.nn.Linear(8, 12)
    with pytest.raises(ValueError, match="half precision on CUDA"):
        linear_gelu(torch.randn(2, 3, 8), up.weight, up.bias)


@pytest.mark.skipif(not CUDA, reason="the GELU epilogue is cuBLASLt's")
def test_linear_gelu_on_the_gpu_is_the_tanh_gelu_rounded_once():
    """Pre-activations fed exactly (one non-zero input column, unit weights) where the tanh and erf GELUs differ by
    1-10 % relative: bf16 rounding (0.4 %) cannot hide which one the epilogue computes."""
    from cfcli.ops.linear import linear_gelu

    v = torch.linspace(-3.5, -2.0, 64, device="cuda").to(torch.bfloat16)
    x = torch.zeros(64, 16, device="cuda", dtype=torch.bfloat16)
    x[:, 0] = v
    weight = torch.zeros(32, 16, device="cuda", dtype=torch.bfloat16)
    weight[:, 0] = 1.0
    got = linear_gelu(x[None], weight, torch.zeros(32, device="cuda", dtype=torch.bfloat16))
    assert got.shape == (1, 64, 32) and got.dtype == torch.bfloat16
    pre = v.float()[:, None].expand(64, 32)
    tanh, erf = torch.nn.functional.gelu(pre, approximate="tanh"), torch.nn.functional.gelu(pre)
    assert ((got[0].float() - tanh) / tanh).abs().max() < 0.01
    assert ((got[0].float() - erf) / erf).abs().max() > 0.03


@pytest.mark.parametrize("queries, keys, splits", [(1560, 32760, 4), (1560, 9360, 4), (1560, 3120, 1), (1560, 1560, 1),
                                                   (4680, 32760, 2), (4680, 9360, 2), (4680, 1560, 1)])
def test_kv_splits_fill_the_gpu_without_tiny_parts(queries, keys, splits):
    from cfcli.ops.split_attention import kv_splits

    assert kv_splits(queries, keys, heads=12, sms=132) == splits  # the DiT's calls on an H100 / H200


def _partial_attention(q, k, v):
    scores = torch.einsum("bnhd,bkhd->bhnk", q, k) * q.shape[-1] ** -0.5
    return torch.einsum("bhnk,bkhd->bnhd", scores.softmax(-1), v), scores.logsumexp(-1)


def test_merged_partial_attentions_are_the_attention_over_all_keys():
    from cfcli.ops.split_attention import merge_partials

    torch.manual_seed(0)
    q = torch.randn(1, 5, 2, 8, dtype=torch.float64)
    k, v = torch.randn(1, 12, 2, 8, dtype=torch.float64), torch.randn(1, 12, 2, 8, dtype=torch.float64)
    k[:, 8:] *= 4  # the parts' log-sum-exps differ a lot
    whole, _ = _partial_attention(q, k, v)
    parts = [_partial_attention(q, k[:, i:i + 4], v[:, i:i + 4]) for i in (0, 4, 8)]
    merged = merge_partials(torch.cat([o for o, _ in parts]), torch.cat([lse for _, lse in parts]))
    assert merged.shape == whole.shape and (merged - whole).abs().max() < 1e-12


@pytest.mark.skipif(not CUDA, reason="split-KV attention runs on cuDNN, its merge in Triton")
def test_split_kv_attention_on_the_gpu_equals_one_pass_within_bf16_rounding():
    from cfcli.ops import split_attention
    from cfcli.ops.attention import attend

    sms = split_attention.split_sms(torch.device("cuda", 0), torch.bfloat16)
    if sms is None:
        pytest.skip("split-KV attention runs on compute capability 9.0+")
    torch.manual_seed(0)
    cache = torch.randn(2, 1, 32760, 12, 128, device="cuda", dtype=torch.bfloat16)
    cache[:, :, 16380:] *= 2  # the halves' log-sum-exps differ: a wrong merge weight would show
    q = torch.randn(1, 1560, 12, 128, device="cuda", dtype=torch.bfloat16)
    k, v = cache[0, :, :32760], cache[1, :, :32760]
    assert split_attention.kv_splits(1560, 32760, 12, sms) > 1
    got, want = split_attention.attend_long(q, k, v, sms), attend(q, k, v)
    exact = attend(q.double(), k.double(), v.double())
    assert got.shape == want.shape and rel_err(got, exact) < 2 * rel_err(want, exact) + 1e-3
    parts = torch.randn(3, 40, 12, 128, device="cuda", dtype=torch.bfloat16)
    lse = torch.randn(3, 12, 40, device="cuda") * 3
    fused = split_attention.merge_partials(parts, lse)  # the Triton kernel
    assert rel_err(fused.cpu(), split_attention.merge_partials(parts.cpu(), lse.cpu())) < 4e-3


def test_attend_is_softmax_attention_with_pytorchs_choice_or_the_kernels_named():
    from torch.nn.attention import SDPBackend

    from cfcli.ops.attention import attend, backend_names

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 5, 2, 8), torch.randn(1, 7, 2, 8), torch.randn(1, 7, 2, 8)
    want = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / 8 ** 0.5, -1), v)
    assert torch.allclose(attend(q, k, v), want, atol=1e-5)
    assert torch.allclose(attend(q, k, v, backends=[SDPBackend.MATH]), want, atol=1e-5)
    assert backend_names()[0] == "cudnn_attention"  # the `cudnn_attention` lever's first choice
