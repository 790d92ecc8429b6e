"""The low-memory parts: int8 weights, the 8-bit KV cache, streamed umT5, offloaded blocks, the lean decoder, and
what the plans cost against the exact path on the tiny frame-wise fixture (CPU)."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cfcli.models.kv_cache import KVCache
from cfcli.models.kv_quant import QuantKVCache
from cfcli.models.offload import HostStore, LayerStream, Parked, offload_blocks_
from cfcli.models.dit import block_linear
from cfcli.ops.weight_quant import Int8Linear, quantize_int8_
from cfcli.pipeline.engine import Engine, EngineOptions
from cfcli.pipeline.memory import candidates, footprint
from cfcli.presets import load_preset
from conftest import FIXTURES, PROMPT, contract, rel_err

# Documented bounds of the low plans against the exact path on the tiny frame-wise fixture (9 latent frames, CPU,
# float32): measured 6.8e-4 latent relative L2, 0.04 mean / 1 max uint8 levels.
LOW_LATENT_REL_L2 = 2e-3
LOW_PIXEL_MEAN, LOW_PIXEL_MAX = 0.2, 2


def tiny():
    return load_preset(FIXTURES / "tiny-framewise.yaml")


def plan(name: str, host_cache: bool = False):
    return next(p for p in candidates(footprint(tiny(), 9, torch.float32), False)
                if p.name == name and p.lean and p.host_decoder_cache == host_cache)


def run(memory=None, frames: int = 9):
    engine = Engine.load(tiny(), "cpu", torch.float32).configure(EngineOptions(), memory)
    ctx = torch.randn(1, 20, 32, generator=torch.Generator().manual_seed(0))
    chunks = list(engine.generate(engine.text_kv(ctx), frames, seed=3))
    return engine, torch.cat([c.latents for c in chunks]), torch.cat([c.pixels for c in chunks])


# -- int8 weights -----------------------------------------------------------------------------------------------------

def test_int8_linear_error_is_the_weight_rounding():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    q = Int8Linear(lin)
    assert q.weight.dtype == torch.int8 and q.weight_scale.shape == (48,)
    x = torch.randn(5, 64)
    err = (q(x) - lin(x)).abs().max()
    step = lin.weight.abs().amax(1) / 127  # each weight is off by at most half a step
    assert 0 < err <= (x.abs().sum(1).max() * step.max() / 2) * 1.001
    assert q.to(torch.bfloat16).weight.dtype == torch.int8  # a dtype cast leaves the int8 weight alone


def test_quantize_int8_takes_every_block_linear():
    engine = Engine.load(tiny(), "cpu", torch.float32)
    assert quantize_int8_(engine.dit, block_linear) == 2 * 10  # 2 blocks × (4 self, 4 cross, 2 FFN)
    assert type(engine.dit.head.head) is nn.Linear and type(engine.dit.text_embedding[0]) is nn.Linear


# -- the 8-bit KV cache -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, bound", [("int8", 1.01 / 254), ("fp8", 1.01 / 16)])
def test_quant_cache_follows_the_cache_through_eviction(fmt, bound):
    """Same slots and eviction as `KVCache` (a 3-frame window with a 1-frame sink), values within the format's
    relative rounding (per token and head)."""
    args = (2, 1, 3, 4, 2, 8)
    ref = KVCache(*args, sink_frames=1, rolling=True)
    q = QuantKVCache(*args, sink_frames=1, rolling=True, fmt=fmt)
    gen = torch.Generator().manual_seed(1)
    for frame in range(6):
        k, v = (torch.randn(1, 4, 2, 8, generator=gen) for _ in range(2))
        for cache in (ref, q):
            cache.begin(frame, 1)
        for layer in range(2):
            rk, rv = ref.update(layer, k, v)
            qk, qv = q.update(layer, k, v)
            assert qk.shape == rk.shape
            for a, b in ((qk, rk), (qv, rv)):
                assert ((a - b).abs() <= b.abs().amax(-1, keepdim=True) * bound + 1e-7).all()
        ref.end()
        q.end()
    assert q.kv.dtype == {"int8": torch.int8, "fp8": torch.float8_e4m3fn}[fmt]
    assert q.frames == ref.frames == 3


def test_quant_cache_bytes():
    q = QuantKVCache(2, 1, 3, 4, 2, 8)
    assert QuantKVCache.nbytes(2, 1, 12, 2, 8, dtype=torch.float32) == q.kv.nbytes + q.scale.nbytes
    assert q.kv.nbytes + q.scale.nbytes == 2 * 2 * 12 * 2 * (8 + 4)  # int8 values, float32 scales (CPU dtype)


# -- streaming and offloading -----------------------------------------------------------------------------------------

def test_streamed_umt5_gives_the_resident_features():
    from cfcli.models.checkpoint import load_strict, read_state_dict
    from cfcli.models.t5 import UMT5Encoder, encode_text
    from cfcli.models.t5_stream import StreamedUMT5

    cfg = tiny().configs.text_encoder
    sd = read_state_dict(FIXTURES / "weights/models_t5_umt5-xxl-enc-bf16.pth")
    with torch.device("meta"):
        encoder = UMT5Encoder(cfg)
    load_strict(encoder, sd, what="t5", dtype=torch.float32, device="cpu")
    ids = torch.randint(1, cfg.vocab, (1, 512), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(512) < 11).long()[None]
    resident = encode_text(encoder, ids, mask, 512)
    assert torch.equal(encode_text(StreamedUMT5(encoder, torch.device("cpu")), ids, mask, 512), resident)


def test_offloaded_blocks_run_in_order_with_their_index():
    engine = Engine.load(tiny(), "cpu", torch.float32)
    blocks = list(engine.dit.blocks)
    assert offload_blocks_(engine.dit, 1, bind=lambda s, b: None) == 1
    assert list(engine.dit.blocks) == blocks and len(engine.dit.blocks) == 2
    assert [b.self_attn.layer for b in engine.dit.blocks] == [0, 1]
    stream = LayerStream([nn.Linear(2, 2) for _ in range(3)], torch.device("cpu"))
    assert len(list(stream)) == 3


def test_parked_and_host_store_are_transparent_off_the_gpu():
    lin = nn.Linear(2, 2)
    parked = Parked([lin], torch.device("cpu"))
    with parked.on_device():
        assert lin.weight.device.type == "cpu"
    store = HostStore()
    store["a"] = torch.ones(2)
    assert torch.equal(store.get("a"), torch.ones(2)) and "a" in store and store.get("b") is None


# -- the plans on the tiny fixture ------------------------------------------------------------------------------------

@pytest.mark.parametrize("host_cache", [False, True])
def test_lean_exact_plans_give_the_default_latents_and_pixels_within_a_level(host_cache):
    """Parked text projections, frame-by-frame decoding, decoder caches in host memory: the same latents, bit for bit
    (the same DiT kernels on the same shapes); pixels within `SPLIT_DECODE_MAX` level at no more than
    `SPLIT_DECODE_SHARE` of them (a different decoder code path: see `pixels_within_a_level`)."""
    _, lat, pix = run()
    engine, lat2, pix2 = run(plan("exact", host_cache))
    assert engine.parked is not None and engine.vae.decoder.split_frames and engine.vae.cache_on_host == host_cache
    assert torch.equal(lat2, lat)
    pixels_within_a_level(pix2, pix)


# Frame-by-frame decoding runs the VAE's convolutions on other shapes than whole-clip decoding, so the CPU kernels
# (oneDNN/MKL, picked by CPU and torch version) may sum in another order: float32 results a rounding apart. Pixels are
# truncated to uint8 (`to_uint8`), so a value a rounding below a level boundary drops one level: a difference of
# exactly 1 at a few pixels (seen: 13 of 380,160 with torch 2.14.1, and 2.13.0 on an AVX-512 CPU; 0 elsewhere). More
# than 1 level, or more than 0.1 % of the pixels, would be a real difference in what is decoded.
SPLIT_DECODE_MAX, SPLIT_DECODE_SHARE = 1, 1e-3


def pixels_within_a_level(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype == torch.uint8
    diff = (got.int() - want.int()).abs()
    assert diff.max() <= SPLIT_DECODE_MAX
    assert (diff > 0).float().mean() <= SPLIT_DECODE_SHARE


def test_host_decoder_cache_decodes_the_same_pixels():
    _, lat, pix = run(plan("low"))
    engine, lat2, pix2 = run(plan("min", host_cache=True))
    assert engine.vae.cache_on_host
    assert torch.equal(lat2, lat) and torch.equal(pix2, pix)


def test_low_plan_error_is_within_the_documented_bound():
    _, lat, pix = run()
    engine, lat2, pix2 = run(plan("low"))
    assert engine.kv_format == "int8" and isinstance(engine.dit.blocks[0].ffn[0], Int8Linear)
    err = rel_err(lat2, lat)
    diff = (pix2.float() - pix.float()).abs()
    assert 0 < err < LOW_LATENT_REL_L2
    assert diff.mean() < LOW_PIXEL_MEAN and diff.max() <= LOW_PIXEL_MAX


def test_low_vram_flag_runs_the_low_plan_on_the_cpu(cf, tmp_path):
    exact, low = tmp_path / "exact.safetensors", tmp_path / "low.safetensors"
    assert cf(*contract("tiny-framewise.yaml", PROMPT, 1, 9, exact, tmp_path / "a.mkv")).exit_code == 0
    r = cf(*contract("tiny-framewise.yaml", PROMPT, 1, 9, low, tmp_path / "b.mkv", "--low-vram"))
    assert r.exit_code == 0, r.stderr
    assert "memory plan: low" in r.stderr
    err = rel_err(load_file(str(low))["latents"], load_file(str(exact))["latents"])
    assert 0 < err < LOW_LATENT_REL_L2


def test_bench_reports_the_plan(cf):
    import json

    r = cf("bench", "--preset", FIXTURES / "tiny-framewise.yaml", "--random-weights", "--device", "cpu", "--frames", 5,
           "--repeat", 1, "--low-vram", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["plan"].startswith("low (") and "KV cache int8" in out["plan"]
    assert out["phase_peak_gib"] == {}  # CPU: no GPU memory to measure
