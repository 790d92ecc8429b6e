"""The memory planner: part sizes from the model configs, which plan each budget gets, the refusal message."""

import pytest
import torch

from cfcli.errors import CfError
from cfcli.pipeline.memory import (GIB, GpuMemory, budget_for, candidates, choose_plan, decoder_peak, footprint,
                                   plan_memory)
from cfcli.presets import load_preset
from conftest import FIXTURES, PROMPT, contract

LATENTS_81 = 21  # 81 video frames


@pytest.fixture(scope="module")
def full():
    """Footprint of the shipped frame-wise preset, 81 frames at 480×832 in bf16 (meta-device models: no weights)."""
    return footprint(load_preset("framewise"), LATENTS_81, torch.bfloat16)


def test_sizes_follow_the_model_configs(full):
    # KV: 30 layers × K,V × 21 frames × 1560 tokens × 1536 × 2 bytes (the 5.6 GiB).
    assert full.kv == 30 * 2 * 21 * 1560 * 1536 * 2
    # int8 KV: one byte a value plus a bf16 scale per token and head (12 heads of 128).
    assert full.kv_quant == 30 * 2 * 21 * 1560 * 12 * (128 + 2)
    assert 2.6 < full.dit / GIB < 2.7  # Wan2.1-1.3B in bf16
    assert 0.5 < full.dit_int8 / full.dit < 0.52  # block linears at one byte, the rest (embeddings, norms) as they were
    assert 10.5 < full.text_resident / GIB < 10.8  # umT5-XXL whole
    assert full.text_stream < full.text_resident / 10  # two of its 24 blocks and the activations


def test_decoder_working_set_shrinks_with_each_plan():
    from cfcli.models.build import model_configs

    whole, _ = decoder_peak("wan", model_configs({}), 60, 104, torch.bfloat16)
    split, host = decoder_peak("wan", model_configs({}), 60, 104, torch.bfloat16, split=True)
    assert 2.9 < whole / GIB < 3.2  # four full-resolution frames at once, with every layer's two-frame past
    assert split < whole - 0.7 * GIB  # one frame at a time after time upsampling
    assert host < split / 2  # only the running layer's past on the device
    tiny, same = decoder_peak("taehv", model_configs({}), 60, 104, torch.bfloat16)
    assert 0 < tiny == same < whole / 4  # TAEHV: no host-cache form, a fraction of the VAE's working set


def test_decoder_peaks_are_traced_once_per_machine(monkeypatch, tmp_path):
    """The next process reads them from $CF_HOME (tracing imports torch._dynamo: seconds); a damaged file is traced
    again and written over."""
    from cfcli.models.build import model_configs
    from cfcli.pipeline import memory

    monkeypatch.setenv("CF_HOME", str(tmp_path))
    args = ("wan", model_configs({}), 6, 10, torch.bfloat16)
    traced = []
    real = memory._trace_decoder_peak
    monkeypatch.setattr(memory, "_trace_decoder_peak", lambda *a: traced.append(a) or real(*a))
    memory.decoder_peak.cache_clear()
    first = decoder_peak(*args)
    memory.decoder_peak.cache_clear()  # as a new process
    assert decoder_peak(*args) == first and len(traced) == 1
    (kept,) = (tmp_path / "compiled").glob("*.json")
    kept.write_text("{not json")
    memory.decoder_peak.cache_clear()
    assert decoder_peak(*args) == first and len(traced) == 2
    assert '"value"' in kept.read_text()
    memory.decoder_peak.cache_clear()
    assert decoder_peak(*args[:-1], torch.float32) != first and len(traced) == 3  # another dtype, another figure
    memory.decoder_peak.cache_clear()


@pytest.mark.parametrize("budget, name, text, graphs, offload", [
    (139, "exact", "resident", True, 0),  # an H200: today's path
    (11, "exact", "stream", False, 0),  # a 12 GB card (decoder caches in host memory)
    (7, "low+offload", "stream", False, 12),  # an 8 GB card
    (5, "min", "stream", False, 30),  # a 6 GB card
])
def test_each_budget_gets_the_largest_plan_that_fits(full, budget, name, text, graphs, offload):
    plan = choose_plan(full, int(budget * GIB))
    assert (plan.name, plan.text, plan.graphs, plan.offload_blocks) == (name, text, graphs, offload)
    assert plan.need <= budget * GIB
    assert (plan.weights == "int8") == (name != "exact") and (plan.kv == "int8") == (name != "exact")


def test_nothing_fits_is_one_message_with_need_and_have(full):
    with pytest.raises(CfError) as err:
        choose_plan(full, 4 * GIB, what="framewise at 832×480")
    assert err.value.message == "framewise at 832×480 needs at least 4.7 GiB of GPU memory; 4.0 GiB is available"
    assert "fewer frames" in err.value.hint


def test_plans_are_ordered_by_memory(full):
    needs = [full.need(p) for p in candidates(full, False)]
    assert needs[0] == max(needs) and needs[-1] == min(needs)
    assert all(p.weights == "int8" for p in candidates(full, True))


def test_budget_from_the_gpu():
    gpu = GpuMemory(total=12 * GIB, free=11 * GIB)
    assert budget_for(gpu, None, False) == 11 * GIB  # what is free
    assert budget_for(gpu, 8.0, False) == 8 * GIB
    assert budget_for(gpu, 20.0, False) == 11 * GIB  # never more than is free
    assert budget_for(gpu, None, True) == 7 * GIB  # --low-vram: an 8 GB card
    with pytest.raises(CfError, match="--max-vram must be positive"):
        budget_for(gpu, 0.0, False)


def test_plan_for_fake_gpus():
    p = load_preset("framewise")
    big = plan_memory(p, LATENTS_81, torch.bfloat16, GpuMemory(141 * GIB, 139 * GIB))
    assert (big.name, big.text, big.graphs, big.compile) == ("exact", "resident", True, True)
    card12 = plan_memory(p, LATENTS_81, torch.bfloat16, GpuMemory(12 * GIB, 11 * GIB))
    assert (card12.name, card12.text, card12.lean, card12.host_decoder_cache) == ("exact", "stream", True, True)
    forced = plan_memory(p, LATENTS_81, torch.bfloat16, GpuMemory(141 * GIB, 139 * GIB), low_vram=True)
    assert forced.weights == "int8" and forced.budget == 7 * GIB
    with pytest.raises(CfError, match="needs at least"):
        plan_memory(p, LATENTS_81, torch.bfloat16, GpuMemory(8 * GIB, 3 * GIB))
    rolling = plan_memory(load_preset("longvideo"), LATENTS_81, torch.bfloat16, GpuMemory(141 * GIB, 139 * GIB),
                          max_vram=20, low_vram=True)
    assert rolling.weights == "int8" and rolling.kv == "model"  # its rolling cache has no 8-bit form
    assert "KV cache full precision" in rolling.describe()
    taehv = plan_memory(p, LATENTS_81, torch.bfloat16, GpuMemory(12 * GIB, 11 * GIB), decoder="taehv")
    assert taehv.name == "exact"  # (the planner once failed on TAEHV's decoder, which has no causal-cache object)


def test_cpu_runs_have_no_budget():
    p = load_preset("framewise")
    assert plan_memory(p, LATENTS_81, torch.float32, None) is None
    assert plan_memory(p, LATENTS_81, torch.float32, None, low_vram=True).name == "low"  # the numerics, on the CPU
    with pytest.raises(CfError, match="--max-vram needs a CUDA GPU"):
        plan_memory(p, LATENTS_81, torch.float32, None, max_vram=5.0)


def test_plan_options_turn_off_what_the_plan_cannot_afford(full):
    from cfcli.pipeline.engine import EngineOptions

    plan = choose_plan(full, 11 * GIB)
    opts = plan.limit(EngineOptions(compile=True, graphs=True))
    assert (opts.compile, opts.graphs) == (True, False)
    assert not choose_plan(full, 139 * GIB).limit(EngineOptions(compile=False)).compile  # the user's "no"


def test_cli_refuses_max_vram_on_the_cpu_before_loading(cf, tmp_path):
    r = cf(*contract("tiny-framewise.yaml", PROMPT, 1, 5, tmp_path / "l.safetensors", tmp_path / "o.mkv",
                     "--max-vram", 5))
    assert r.exit_code == 1 and "--max-vram needs a CUDA GPU" in r.stderr
    assert not (tmp_path / "o.mkv").exists()


def test_footprint_of_a_tiny_preset_counts_its_own_sizes():
    fp = footprint(load_preset(FIXTURES / "tiny-framewise.yaml"), 3, torch.float32)
    assert fp.kv == 2 * 2 * 3 * (6 // 2) * (10 // 2) * 64 * 4  # layers, K/V, frames, tokens (48×80 → 3×5), dim, fp32
