"""The VAE decoder's fast forms (`cfcli.models.vae_fast`) and `cfcli.pipeline.fast.tune_vae`, which swaps them in:
the reference's arithmetic in another form, and a reference that knows nothing of them.
"""

import pytest
import torch

from conftest import rel_err

CUDA = torch.cuda.is_available()


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
    stacked = sum(getattr(m, "taps_weight", None) is not None for m in vae.decoder.modules())
    assert stacked == 27  # every equal-width 3x3x3 conv
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


@pytest.mark.parametrize("outputs, form, weight, shape", [
    (5, "StackedTapsConv3d", "taps_weight", (5, 18, 3, 3)),
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
