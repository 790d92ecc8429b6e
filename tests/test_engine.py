"""The engine (`cfcli.pipeline.engine`): its options and the speed levers it applies, the KV cache it reuses, the
chunks it hands out.

On the CPU every lever is off whatever the options (they are CUDA ones); the GPU test checks what each applies.
"""

import pytest
import torch

from cfcli.pipeline.engine import EngineOptions

from conftest import fixture_engine

CUDA = torch.cuda.is_available()


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


def test_a_decoded_block_comes_out_one_latent_frame_at_a_time(golden):
    engine = fixture_engine("tiny-chunkwise.yaml")
    text_kv = engine.text_kv(golden["chunkwise_4step_t2v.embeds"][None])
    chunks = list(engine.generate(text_kv, 6, seed=0))
    assert [c.latents.shape[0] for c in chunks] == [1] * 6
    assert [c.block_end for c in chunks] == [False, False, True] * 2
    assert [c.pixels.shape[0] for c in chunks] == [1, 4, 4, 4, 4, 4]  # 1 + 4k frames in all
    whole = torch.cat([c.latents for c in engine.generate(text_kv, 6, seed=0, decode=False)])
    assert torch.equal(torch.cat([c.latents for c in chunks]), whole)


def test_plain_turns_every_lever_off_and_the_engine_applies_none():
    from cfcli.pipeline.engine import LEVERS
    from cfcli.session import SpeedFlags

    plain = SpeedFlags(plain=True).options()
    levers = ("compile", "graphs", "cudnn_attention", "split_attention", "fused_gelu", "tuned_vae", "fused_vae")
    assert plain == EngineOptions.plain() and not any(getattr(plain, name) for name in levers)
    assert plain.quantize is None and plain.decoder == "wan" and set(levers) < set(LEVERS)
    assert all(getattr(EngineOptions(), name) for name in levers)  # the default: every lever on where it runs
    assert SpeedFlags(compile=False).options() == EngineOptions(
        compile=False, fused_vae=False)  # the tuned decoder rides on the graphs; its fused kernels on compiling
    engine = fixture_engine("tiny-framewise.yaml").configure(plain)
    assert engine.levers() == [] and engine.runner is engine.dit
    assert all(blk.self_attn.split_kv_sms is None and not blk.fused_gelu for blk in engine.dit.blocks)
    assert all(blk.self_attn.sdpa is None and blk.cross_attn.sdpa is None for blk in engine.dit.blocks)
    assert fast_forms(engine.vae) == [] and engine.vae.decoder.conv1.weight.is_contiguous()
    # (on the CPU the default options apply none either: every lever is a CUDA one)
    assert fixture_engine("tiny-framewise.yaml").configure(EngineOptions()).levers() == []


def test_the_engine_lists_the_levers_it_applied():
    from cfcli.pipeline.fast import tune_vae, use_dit_kernels

    engine = fixture_engine("tiny-framewise.yaml")
    assert use_dit_kernels(engine.dit, True, True, True) == []  # float32 on the CPU: no kernel runs here
    assert all(blk.self_attn.split_kv_sms is None and not blk.fused_gelu for blk in engine.dit.blocks)
    engine.applied.update(tune_vae(engine.vae, fuse=True, stack=True))  # no Triton on the CPU: no fused kernels
    engine.use_decoder("taehv", torch.nn.Identity())
    assert engine.levers() == ["tuned_vae", "taehv"]


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
    assert all(blk.self_attn.sdpa is None and blk.cross_attn.sdpa is None for blk in plain.dit.blocks)
    assert fast_forms(plain.vae) == [] and plain.vae.decoder.conv1.weight.is_contiguous()
    fast = fixture_engine("tiny-framewise.yaml", "cuda")
    fast.dit.to(torch.bfloat16)
    fast.configure(EngineOptions())
    assert {"compile", "graphs", "cudnn_attention", "fused_gelu", "tuned_vae", "fused_vae"} <= set(fast.levers())
    assert all(blk.fused_gelu for blk in fast.dit.blocks)
    assert all(blk.cross_attn.sdpa and blk.cross_attn.sdpa[0].name == "CUDNN_ATTENTION" for blk in fast.dit.blocks)
    assert fast.vae.decoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
