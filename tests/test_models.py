"""Model-level checks: real-size key sets on the meta device, checkpoint prefixes, strict loading, schedule, RoPE."""

import pytest
import torch

from cfcli.errors import CfError
from cfcli.models.checkpoint import generator_state_dict, load_strict, read_state_dict
from cfcli.models.dit import CausalWanDiT, DiTConfig
from cfcli.models.kv_cache import KVCache
from cfcli.ops.rope import axis_channels
from cfcli.pipeline.schedule import FlowSchedule

from conftest import FIXTURES


def test_real_dit_keys_and_size_on_meta():
    with torch.device("meta"):
        dit = CausalWanDiT(DiTConfig())
    sd = dit.state_dict()
    assert len(sd) == 825
    assert sum(t.numel() for t in sd.values()) == 1_418_996_800
    assert sd["blocks.29.ffn.0.weight"].shape == (8960, 1536)
    assert sd["head.head.weight"].shape == (64, 1536)
    assert sd["patch_embedding.weight"].shape == (1536, 16, 1, 2, 2)
    assert sd["blocks.0.modulation"].shape == (1, 6, 1536)
    assert not list(dit.buffers())


def test_rope_split_matches_official():
    assert axis_channels(128) == (44, 42, 42)
    assert axis_channels(32) == (12, 10, 10)


def test_warped_steps_shift_5():
    s = FlowSchedule(5.0)
    assert s.warp([1000, 750, 500, 250]) == [1000.0, 937.5, pytest.approx(833.3333129882812, abs=0), 625.0]
    assert s.sigma(0.0) == pytest.approx(0.0049800803, rel=1e-6)
    assert FlowSchedule(8.0).warp([250]) == [pytest.approx(727.2727661132812, abs=1e-4)]


def test_checkpoint_prefixes_and_ema_choice():
    raw = read_state_dict(FIXTURES / "weights" / "causal_forcing.pt")
    ema, plain = generator_state_dict(raw, True), generator_state_dict(raw, False)
    assert set(ema) == set(plain) and "blocks.0.self_attn.q.weight" in ema
    assert not torch.equal(ema["blocks.0.self_attn.q.weight"], plain["blocks.0.self_attn.q.weight"])
    fsdp = {"generator_ema": {f"model._fsdp_wrapped_module.{k}": v for k, v in ema.items()}}
    assert generator_state_dict(fsdp, True).keys() == ema.keys()
    only_plain = {"generator": {f"model.{k}": v for k, v in plain.items()}}
    assert torch.equal(generator_state_dict(only_plain, True)["head.head.bias"], plain["head.head.bias"])


def test_strict_load_names_the_mismatch():
    sd = generator_state_dict(read_state_dict(FIXTURES / "weights" / "causal_forcing.pt"), True)
    with torch.device("meta"):
        dit = CausalWanDiT(DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=3, text_dim=32))
    with pytest.raises(CfError, match="missing: blocks.2"):
        load_strict(dit, sd, what="generator", dtype=torch.float32, device="cpu")
    with torch.device("meta"):
        dit = CausalWanDiT(DiTConfig(dim=64, ffn_dim=256, num_heads=2, num_layers=2, text_dim=32))
    with pytest.raises(CfError, match="wrong shape"):
        load_strict(dit, sd, what="generator", dtype=torch.float32, device="cpu")


def test_load_into_meta_casts_to_target_dtype():
    sd = generator_state_dict(read_state_dict(FIXTURES / "weights" / "causal_forcing.pt"), True)
    with torch.device("meta"):
        dit = CausalWanDiT(DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32))
    load_strict(dit, sd, what="generator", dtype=torch.bfloat16, device="cpu")
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in dit.parameters())
    assert torch.equal(dit.blocks[1].ffn[2].weight, sd["blocks.1.ffn.2.weight"].bfloat16())


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    data = (FIXTURES / "weights" / "causal_forcing.pt").read_bytes()
    bad = tmp_path / "causal_forcing.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CfError, match="truncated"):
        read_state_dict(bad)


def test_kv_cache_rolls_with_sink_at_fixed_size():
    cache = KVCache(2, 1, 4, 3, 2, 4, sink_frames=1, rolling=True)
    size = cache.kv.shape
    for frame in range(10):
        for _ in range(3):  # denoising steps and the clean pass overwrite the same slots
            cache.begin(frame, 1)
            for layer in range(2):
                k = torch.full((1, 3, 2, 4), float(frame))
                keys, _ = cache.update(layer, k, k)
            cache.end()
        assert cache.kv.shape == size
        held = keys[0, ::3, 0, 0].tolist()
        assert held[0] == 0.0 and held[-1] == frame  # the sink frame stays, the newest is last
        assert len(held) == min(frame + 1, 4)
    assert held == [0.0, 7.0, 8.0, 9.0]


def test_global_cache_refuses_to_overflow():
    cache = KVCache(1, 1, 2, 3, 1, 4)
    for f in range(2):
        cache.begin(f, 1)
        cache.update(0, torch.zeros(1, 3, 1, 4), torch.zeros(1, 3, 1, 4))
        cache.end()
    with pytest.raises(ValueError):
        cache.begin(2, 1)


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
