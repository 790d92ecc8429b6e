"""The CUDA fast path (`cfcli.pipeline.fast`): compiled block stages, CUDA graphs per KV-cache plan, cache reuse.

Compilation is checked on the CPU against the official outputs (inductor compiles for the CPU too); graphs need a
GPU, so those tests run where CUDA is present (`cf bench` on the device runs them at full size).
"""

import shutil

import pytest
import torch

from cfcli.models.kv_cache import KVCache
from cfcli.pipeline.engine import Engine, EngineOptions
from cfcli.presets import load_preset

from conftest import FIXTURES, rel_err

CUDA = torch.cuda.is_available()


def fixture_engine(preset: str, device: str = "cpu") -> Engine:
    return Engine.load(load_preset(FIXTURES / preset), device, torch.float32)


def latents_of(engine: Engine, golden: dict, case: str, frames: int) -> torch.Tensor:
    text_kv = engine.text_kv(golden[f"{case}.embeds"][None])
    chunks = engine.generate(text_kv, frames, seed=0, decode=False)
    return torch.cat([c.latents for c in chunks]).cpu()


def inductor_works() -> bool:
    """Whether torch.compile can build CPU kernels here (it needs a C++ compiler and Python's headers)."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return False
    try:
        return bool(torch.compile(lambda x: x * 2 + 1)(torch.ones(3)).eq(3).all())
    except Exception:  # noqa: BLE001 - any toolchain failure means: cannot compile on this machine
        return False


def test_compiled_blocks_still_match_the_official_latents(golden):
    from cfcli.pipeline.fast import compile_blocks

    if not inductor_works():
        pytest.skip("torch.compile cannot build CPU kernels on this machine (no C++ toolchain)")

    engine = fixture_engine("tiny-framewise.yaml")
    eager = latents_of(engine, golden, "framewise_4step_t2v", 21)
    compile_blocks(engine.dit)
    compiled = latents_of(engine, golden, "framewise_4step_t2v", 21)
    want = golden["framewise_4step_t2v.latents"]
    assert rel_err(eager, want) <= 1e-5
    assert rel_err(compiled, want) <= 1e-5
    # every block runs the compiled stages: the blocks' attributes are compiled wrappers, not the bound methods
    assert all(blk.project.__class__.__name__ != "method" for blk in engine.dit.blocks)


def test_accelerate_is_a_no_op_off_the_gpu():
    engine = fixture_engine("tiny-framewise.yaml")
    assert engine.accelerate() is engine and engine.runner is engine.dit


def test_one_cache_buffer_serves_every_video_of_the_same_layout():
    engine = fixture_engine("tiny-framewise.yaml")
    first = engine.new_cache(21)
    first.begin(0, 1)
    first.end()
    again = engine.new_cache(21)
    assert again is first and again.frames == 0  # reset, not reallocated
    longer = engine.new_cache(30)  # past the horizon: a rolling cache of another layout
    assert longer is not first and longer.rolling


def test_plan_key_is_shared_by_a_blocks_steps_and_clean_pass_only():
    cache = KVCache(2, 1, 4, 6, 2, 4)
    keys = []
    for block in range(4):
        step_keys = set()
        for _ in range(3):  # steps, then the clean pass: same slots
            cache.begin(block, 1)
            step_keys.add(cache.plan_key())
            cache.end()
        assert len(step_keys) == 1
        keys.append(step_keys.pop())
    assert len(set(keys)) == 4


def test_a_full_rolling_cache_repeats_its_plan():
    cache = KVCache(2, 1, 3, 6, 2, 4, sink_frames=1, rolling=True)
    keys = []
    for block in range(6):
        cache.begin(block, 1)
        keys.append(cache.plan_key())
        cache.end()
    assert keys[3] == keys[4] == keys[5] != keys[2]  # once full, every append evicts the same way


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("case,preset,frames", [("framewise_4step_t2v", "tiny-framewise.yaml", 21),
                                                ("chunkwise_4step_t2v", "tiny-chunkwise.yaml", 21),
                                                ("framewise_4step_rolling", "tiny-framewise-rolling.yaml", 12)])
def test_graphs_replay_exactly_what_the_eager_calls_compute(golden, case, preset, frames, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 convolutions, as on the CPU
    engine = fixture_engine(preset, "cuda")
    eager = latents_of(engine, golden, case, frames)
    engine.accelerate(EngineOptions.plain(graphs=True))
    first = latents_of(engine, golden, case, frames)
    captured = engine.runner.captures
    second = latents_of(engine, golden, case, frames)
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert captured > 0 and engine.runner.captures == captured  # the second video only replays
    assert engine.runner.replays > captured and torch.isfinite(second).all()
    # (not compared with the fixture: a CUDA generator draws another noise stream than the CPU one it was made with)


def test_channels_last_decoder_gives_the_same_pixels():
    """The layout and time stacking the fast path puts the VAE decoder in: same arithmetic (CPU float32: within
    summation order)."""
    from cfcli.models.vae import VAEConfig, WanVAE
    from cfcli.pipeline.fast import tune_vae

    torch.manual_seed(0)
    vae = WanVAE(VAEConfig(dim=8)).eval()
    for p in vae.parameters():
        torch.nn.init.normal_(p, std=0.1)
    z = torch.randn(1, 3, 16, 6, 8)
    plain = vae.decode(z)
    tune_vae(vae, fuse=True, stack=True)  # no Triton kernels on the CPU: the layout, and torch's time stacking
    tuned = vae.decode(z)
    assert vae.decoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert sum(getattr(m, "taps_weight", None) is not None for m in vae.decoder.modules()) == 27  # every equal-width 3x3x3 conv
    assert sum(getattr(m, "phase_weight", None) is not None for m in vae.decoder.modules()) == 3  # every upsampling
    assert vae.decoder.head[2].tap_outputs_weight is not None
    assert plain.shape == tuned.shape == (1, 9, 3, 48, 64)
    assert (plain - tuned).abs().max() < 1e-5 and plain.std() > 0.01


def test_a_fused_norm_writes_straight_after_the_cached_past_chunk_after_chunk(monkeypatch):
    """`CausalConv3d.convolve_normed` with a fused norm (the GPU kernel stood in for by its float32 arithmetic on the
    CPU) fills the frames after the past in place (`CausalCache.extend(fill=...)`): what the norm, then the
    convolution, give."""
    from cfcli.models.vae import CausalCache, CausalConv3d, RMSNorm
    from cfcli.models.vae_fast import ChannelsLastConv3d, FusedRMSNorm, swap_
    from cfcli.ops import fused_norm
    from cfcli.ops.time_taps import _norm_silu

    def norm_silu_on_cpu(x, weight, bias=None, out=None):
        assert out is not None and out.is_contiguous(memory_format=torch.channels_last_3d)
        out.copy_(_norm_silu(x, weight, bias))
        return out

    torch.manual_seed(0)
    conv, norm = CausalConv3d(6, 5, 3, padding=1), RMSNorm(6, 3)
    torch.nn.init.uniform_(norm.gamma, 0.5, 1.5)
    bias = torch.randn(6)
    chunks = [torch.randn(2, 6, t, 7, 9).contiguous(memory_format=torch.channels_last_3d) for t in (1, 4, 2)]
    plain_cache, fused_cache = CausalCache(), CausalCache()
    with torch.no_grad():
        plain = [conv.convolve_normed(x, norm, bias, plain_cache) for x in chunks]
        swap_(conv, ChannelsLastConv3d)
        swap_(norm, FusedRMSNorm)
        monkeypatch.setattr(fused_norm, "norm_silu", norm_silu_on_cpu)
        fused = [conv.convolve_normed(x, norm, bias, fused_cache) for x in chunks]
    for p, f in zip(plain, fused):
        assert p.shape == f.shape and rel_err(f, p) < 1e-5
    assert fused[1].std() > 0.1


@pytest.mark.parametrize("outputs, form, weight, shape", [(5, "StackedTapsConv3d", "taps_weight", (5, 18, 3, 3)),
                                                           (3, "TapOutputsConv3d", "tap_outputs_weight", (16, 6, 3, 3))])
def test_2d_forms_of_the_causal_conv_equal_the_3d_conv_chunk_after_chunk(outputs, form, weight, shape):
    """`StackedTapsConv3d` (time taps stacked into input channels) and `TapOutputsConv3d` (into output channels, the
    decoder head's form), fed 1, 4, 2 frames (the past carried over, zeros before the start), give what the 3D
    convolution gives."""
    from cfcli.models import vae_fast
    from cfcli.models.vae import CausalCache, CausalConv3d

    torch.manual_seed(0)
    conv = CausalConv3d(6, outputs, 3, padding=1)
    chunks = [torch.randn(2, 6, t, 7, 9) for t in (1, 4, 2)]
    plain_cache, cache_2d = CausalCache(), CausalCache()
    with torch.no_grad():
        plain = [conv(x, plain_cache) for x in chunks]
        vae_fast.swap_(conv, getattr(vae_fast, form))
        as_2d = [conv(x, cache_2d) for x in chunks]
    assert getattr(conv, weight).shape == shape  # tap outputs: 3 taps x 3 outputs, padded to 16
    for p, s in zip(plain, as_2d):
        assert p.shape == s.shape and rel_err(s, p) < 1e-6
    assert as_2d[1].std() > 0.1


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


def test_upsample_nearest_2x_equals_nn_upsample_in_both_layouts():
    from cfcli.models.vae import upsample_nearest_2x

    x = torch.randn(2, 5, 3, 4)
    want = torch.nn.Upsample(scale_factor=2.0, mode="nearest")(x)
    assert torch.equal(upsample_nearest_2x(x), want)
    last = upsample_nearest_2x(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(last, want) and last.is_contiguous(memory_format=torch.channels_last)


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


@pytest.mark.skipif(not CUDA, reason="the tuned decoder's kernels are Triton on CUDA")
def test_tuned_decoder_on_the_gpu_stays_within_bf16_rounding_of_the_plain_one():
    from cfcli.models.vae import VAEConfig, WanVAE
    from cfcli.models.vae_fast import FusedRMSNorm
    from cfcli.pipeline.fast import tune_vae

    torch.manual_seed(0)
    vae = WanVAE(VAEConfig(dim=16)).eval()
    for p in vae.parameters():
        torch.nn.init.normal_(p, std=0.1)
    vae = vae.cuda()
    z = torch.randn(1, 3, 16, 6, 8, device="cuda")
    exact = vae.decode(z)  # float32
    vae = vae.to(torch.bfloat16)
    plain = vae.decode(z)
    tune_vae(vae, fuse=True, stack=True)
    assert isinstance(vae.decoder.head[0], FusedRMSNorm) and any(
        getattr(m, "taps_weight", None) is not None for m in vae.decoder.modules())
    tuned = vae.decode(z)
    assert rel_err(plain, exact) < 0.03 and rel_err(tuned, exact) < 0.03 and exact.std() > 0.01


def test_fp8_off_an_fp8_gpu_is_refused_before_anything_loads(cf, tmp_path):
    out = tmp_path / "v.mp4"
    r = cf("generate", "a fox", "--preset", FIXTURES / "tiny-framewise.yaml", "--device", "cpu", "--quantize", "fp8",
           "--out", out)
    assert r.exit_code == 1 and "compute capability 8.9" in r.output and not out.exists()
    r = cf("bench", "--preset", FIXTURES / "tiny-framewise.yaml", "--device", "cpu", "--quantize", "int4")
    assert r.exit_code == 1 and "unknown quantization 'int4'" in r.output


def test_a_decoded_block_comes_out_one_latent_frame_at_a_time(golden):
    engine = fixture_engine("tiny-chunkwise.yaml")
    text_kv = engine.text_kv(golden["chunkwise_4step_t2v.embeds"][None])
    chunks = list(engine.generate(text_kv, 6, seed=0))
    assert [c.latents.shape[0] for c in chunks] == [1] * 6
    assert [c.block_end for c in chunks] == [False, False, True] * 2
    assert [c.pixels.shape[0] for c in chunks] == [1, 4, 4, 4, 4, 4]  # 1 + 4k frames in all
    whole = torch.cat([c.latents for c in engine.generate(text_kv, 6, seed=0, decode=False)])
    assert torch.equal(torch.cat([c.latents for c in chunks]), whole)


class RerunOnReplay:
    """A CPU stand-in for `CudaGraphs` with its contract: capturing runs nothing; a replay runs the captured call on
    whatever its captured (static) buffers hold at that moment, like a CUDA graph. A wrapper that forgot to refresh
    a static input would replay stale data and fail the comparisons below."""

    def __init__(self):
        self.resets = 0

    def capture(self, fn):
        from cfcli.pipeline.fast import CapturedCall

        call = CapturedCall(None, None)

        def replay():
            call.out = fn()

        call.replay = replay
        return call

    def reset(self):
        self.resets += 1


def graphed(engine: Engine):
    from cfcli.pipeline.fast import GraphedDiT

    engine.runner = GraphedDiT(engine.dit, capturer=RerunOnReplay())
    return engine.runner


def test_graph_bookkeeping_replays_every_plan_with_fresh_inputs(golden):
    engine = fixture_engine("tiny-framewise.yaml")
    eager = latents_of(engine, golden, "framewise_4step_t2v", 21)
    runner = graphed(engine)
    first = latents_of(engine, golden, "framewise_4step_t2v", 21)
    assert torch.equal(first, eager)
    # 21 blocks, one plan each: block k's first call warms up, its second is captured; 4 steps + clean pass, none
    # after the last block
    assert runner.captures == 21 and runner.replays == 20 * 4 + 3
    second = latents_of(engine, golden, "framewise_4step_t2v", 21)
    assert torch.equal(second, eager)
    assert runner.captures == 21 and runner.replays == 83 + 20 * 5 + 4  # the second video only replays


def test_graphs_follow_a_prompt_switch_and_a_new_cache_layout(golden):
    from cfcli.pipeline.prompts import TextSchedule

    engine = fixture_engine("tiny-framewise.yaml")
    a = engine.text_kv(golden["framewise_4step_t2v.embeds"][None])
    b = engine.text_kv(golden["chunkwise_4step_t2v.embeds"][None])
    schedule = TextSchedule((0, 5), (a, b))

    def run(frames):
        return torch.cat([c.latents for c in engine.generate(schedule, frames, seed=3, decode=False)])

    eager_short, eager_long = run(9), run(30)  # 30 latent frames: past the horizon, a rolling cache
    runner = graphed(engine)
    assert torch.equal(run(9), eager_short)
    assert torch.equal(run(30), eager_long) and runner.capturer.resets == 1  # new buffer: graphs dropped once
    assert runner.captures < 9 + 30  # once the window is full, every block has the same plan


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

    if split_attention.split_sms(torch.device('cuda', 0), torch.bfloat16) is None:
        pytest.skip("split-KV attention runs on compute capability 9.0+")
    torch.manual_seed(0)
    cache = torch.randn(2, 1, 32760, 12, 128, device="cuda", dtype=torch.bfloat16)
    cache[:, :, 16380:] *= 2  # the halves' log-sum-exps differ: a wrong merge weight would show
    q = torch.randn(1, 1560, 12, 128, device="cuda", dtype=torch.bfloat16)
    k, v = cache[0, :, :32760], cache[1, :, :32760]
    assert split_attention.kv_splits(1560, 32760, 12, split_attention.split_sms(torch.device('cuda', 0), torch.bfloat16)) > 1
    got, want = split_attention.attend_long(q, k, v, split_attention.split_sms(q.device, q.dtype)), attend(q, k, v)
    exact = attend(q.double(), k.double(), v.double())
    assert got.shape == want.shape and rel_err(got, exact) < 2 * rel_err(want, exact) + 1e-3
    parts = torch.randn(3, 40, 12, 128, device="cuda", dtype=torch.bfloat16)
    lse = torch.randn(3, 12, 40, device="cuda") * 3
    fused = split_attention.merge_partials(parts, lse)  # the Triton kernel
    assert rel_err(fused.cpu(), split_attention.merge_partials(parts.cpu(), lse.cpu())) < 4e-3


def test_plain_turns_every_lever_off_and_the_engine_applies_none():
    from cfcli.cli.common import engine_options
    from cfcli.pipeline.engine import LEVERS

    plain = engine_options(True, True, None, "wan", plain=True)
    levers = ("compile", "graphs", "split_attention", "fused_gelu", "tuned_vae", "fused_vae")
    assert plain == EngineOptions.plain() and not any(getattr(plain, name) for name in levers)
    assert plain.quantize is None and plain.decoder == "wan" and set(levers) < set(LEVERS)
    assert all(getattr(EngineOptions(), name) for name in levers)  # the default: every lever on where it runs
    assert engine_options(False, True, None, "wan", plain=False) == EngineOptions(
        compile=False, fused_vae=False)  # the tuned decoder rides on the graphs; its fused kernels on compiling
    engine = fixture_engine("tiny-framewise.yaml").configure(plain)
    assert engine.levers() == [] and engine.runner is engine.dit
    assert all(blk.self_attn.split_kv_sms is None and not blk.fused_gelu for blk in engine.dit.blocks)
    assert fast_forms(engine.vae) == [] and engine.vae.decoder.conv1.weight.is_contiguous()
    # (on the CPU the default options apply none either: every lever is a CUDA one)
    assert fixture_engine("tiny-framewise.yaml").configure(EngineOptions()).levers() == []


def test_the_engine_lists_the_levers_it_applied():
    from cfcli.pipeline.fast import tune_vae, use_dit_kernels

    engine = fixture_engine("tiny-framewise.yaml")
    assert use_dit_kernels(engine.dit, True, True) == []  # float32 on the CPU: neither kernel runs here
    assert all(blk.self_attn.split_kv_sms is None and not blk.fused_gelu for blk in engine.dit.blocks)
    engine.applied.update(tune_vae(engine.vae, fuse=True, stack=True))  # no Triton on the CPU: no fused kernels
    engine.use_decoder("taehv", torch.nn.Identity())
    assert engine.levers() == ["tuned_vae", "taehv"]


def test_the_reference_dit_calls_no_fast_kernel_and_the_model_holds_the_choice(monkeypatch):
    from cfcli.models import dit as dit_module

    def refuse(*args):
        raise AssertionError("a fast kernel ran")

    monkeypatch.setattr(dit_module, "attend_long", refuse)
    monkeypatch.setattr(dit_module, "linear_gelu", refuse)
    torch.manual_seed(0)
    dit = dit_module.CausalWanDiT(dit_module.DiTConfig(dim=32, ffn_dim=48, num_heads=2, num_layers=2, text_dim=24,
                                                       text_len=8)).eval()
    x, t, ctx = torch.randn(1, 1, 16, 4, 4), torch.tensor([[500.0]]), torch.randn(1, 8, 24)
    with torch.no_grad():
        kv = dit.text_kv(ctx)
        cache = KVCache(2, 1, 2, 4, 2, 16)
        plain = dit(x, t, kv, cache, 0)
        dit.use_kernels(split_kv_sms=132, fused_gelu=True)
        with pytest.raises(AssertionError, match="a fast kernel ran"):
            dit(x, t, kv, KVCache(2, 1, 2, 4, 2, 16), 0)
        dit.use_kernels()  # back to the reference
        assert torch.equal(dit(x, t, kv, KVCache(2, 1, 2, 4, 2, 16), 0), plain)


def test_plain_refuses_levers_asked_for_by_name(cf):
    r = cf("generate", "a fox", "--preset", FIXTURES / "tiny-framewise.yaml", "--device", "cpu", "--plain",
           "--decoder", "taehv")
    assert r.exit_code == 1 and "--plain runs the reference modules" in r.output
    r = cf("bench", "--preset", FIXTURES / "tiny-framewise.yaml", "--device", "cpu", "--plain", "--quantize", "fp8")
    assert r.exit_code == 1 and "--plain runs the reference modules" in r.output


def fast_forms(vae) -> list:
    """The modules of `vae` that are neither the reference's nor torch's."""
    return [m for m in vae.modules() if type(m).__module__ != "cfcli.models.vae"
            and not type(m).__module__.startswith("torch.nn.")]


@pytest.mark.skipif(not CUDA, reason="the levers are CUDA ones")
def test_on_the_gpu_plain_runs_the_reference_modules_and_the_default_every_lever():
    plain = fixture_engine("tiny-framewise.yaml", "cuda")
    plain.dit.to(torch.bfloat16)
    plain.configure(EngineOptions.plain())
    assert plain.levers() == [] and plain.runner is plain.dit
    assert all(blk.self_attn.split_kv_sms is None and not blk.fused_gelu for blk in plain.dit.blocks)
    assert fast_forms(plain.vae) == [] and plain.vae.decoder.conv1.weight.is_contiguous()
    fast = fixture_engine("tiny-framewise.yaml", "cuda")
    fast.dit.to(torch.bfloat16)
    fast.configure(EngineOptions())
    assert {"compile", "graphs", "fused_gelu", "tuned_vae", "fused_vae"} <= set(fast.levers())
    assert all(blk.fused_gelu for blk in fast.dit.blocks)
    assert fast.vae.decoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)


def test_the_reference_vae_knows_nothing_of_its_fast_forms():
    """`cfcli.models.vae` imports no fast kernel and names no fast form; `swap_` makes a module only into a form of
    its own reference class, keeping its parameters (so its official names and loaded weights)."""
    import ast
    import inspect

    from cfcli.models import vae, vae_fast

    imported = {n.module for n in ast.walk(ast.parse(inspect.getsource(vae))) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"cfcli.ops", "cfcli.ops.time_taps", "cfcli.ops.fused_norm", "cfcli.ops.subpixel"}
    assert "cfcli.models.vae_fast" not in imported
    conv = vae.CausalConv3d(4, 4, 3, padding=1)
    weight = conv.weight
    assert vae_fast.swap_(conv, vae_fast.StackedTapsConv3d) is conv and conv.weight is weight
    assert type(conv) is vae_fast.StackedTapsConv3d and set(dict(conv.named_parameters())) == {"weight", "bias"}
    with pytest.raises(TypeError, match="not a form of"):
        vae_fast.swap_(vae.RMSNorm(4, 3), vae_fast.StackedTapsConv3d)
