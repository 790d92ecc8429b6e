"""`cf bench` on the CPU with the tiny presets: the JSON's shape and counts, the FLOP model, the table, the errors.

No timing is asserted (only that the times are positive and ordered); the FLOP model is checked against
FlopCounterMode on the real sampler and DiT run on the meta device, and against the spec's full-size numbers.
"""

import json
import math

import pytest
import torch

from cfcli.models.build import model_configs
from cfcli.models.dit import CausalWanDiT, DiTConfig
from cfcli.models.t5 import T5Config
from cfcli.models.taehv import TAEHVConfig
from cfcli.pipeline import bench, flops, random_weights
from cfcli.pipeline.engine import Engine
from cfcli.pipeline.sampler import CausalSampler
from cfcli.presets import load_preset

from conftest import FIXTURES

KEYS = {"preset": str, "device": str, "dtype": str, "frames": int, "height": int, "width": int, "weights": str,
        "fps_end_to_end": float, "fps_generation": float, "first_frame_s": float, "block_ms_p50": float,
        "block_ms_p95": float, "text_encode_s": float, "realtime": bool, "attention": list, "gpu": str,
        "blocks": int, "dit_tflop": float, "vae_decode_tflop": float, "text_encode_tflop": float,
        "realtime_factor": float, "latent_frames": int, "floor": dict, "decoder": str, "fast_path": str,
        "warmup_s": float, "levers": list}


def bench_json(cf, preset: str, *extra) -> dict:
    r = cf("bench", "--preset", FIXTURES / preset, "--device", "cpu", "--repeat", 1, "--json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def check_shape(out: dict) -> None:
    for key, kind in KEYS.items():
        assert isinstance(out[key], kind), (key, out[key])
    assert out["peak_vram_gib"] is None and out["text_peak_vram_gib"] is None  # CPU: no GPU memory
    for key in ("fps_end_to_end", "fps_generation", "first_frame_s", "block_ms_p50", "text_encode_s",
                "dit_tflop", "vae_decode_tflop", "text_encode_tflop"):
        assert out[key] > 0 and math.isfinite(out[key]), key
    assert out["block_ms_p95"] >= out["block_ms_p50"]
    assert out["realtime"] == (out["realtime_factor"] >= 1)
    assert out["finite"] is True
    assert set(out["floor"]) == {"fps_end_to_end", "fps_generation", "first_frame_s", "block_ms_p50",
                                 "block_ms_p95", "text_encode_s"}
    if out["peak_tflops"] is None:  # the CPU without --peak-tflops: no floors, as the table's n/a
        assert all(v is None for v in out["floor"].values())
        return
    assert all(v > 0 for v in out["floor"].values())
    assert out["floor"]["fps_generation"] > out["floor"]["fps_end_to_end"]  # decoding only adds work


def test_framewise_fixture_weights_json(cf):
    out = bench_json(cf, "tiny-framewise.yaml", "--frames", 9, "--dtype", "float32", "--peak-tflops", 1)
    check_shape(out)
    assert out["peak_tflops"] == 1
    assert (out["preset"], out["device"], out["dtype"]) == ("tiny-framewise", "cpu", "float32")
    assert (out["frames"], out["latent_frames"], out["blocks"]) == (9, 3, 3)
    assert (out["height"], out["width"], out["weights"]) == (48, 80, "cached")
    assert out["text_load_s"] > 0
    assert out["dit_tflop"] * 1e12 == pytest.approx(hand_framewise_9_frames(), rel=1e-12)


def test_chunkwise_random_weights_rounds_frames(cf):
    r = cf("bench", "--preset", FIXTURES / "tiny-chunkwise.yaml", "--device", "cpu", "--repeat", 1, "--json",
           "--random-weights", "--frames", 20, "--height", 32, "--width", 64)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)  # stdout holds only the JSON; the note went to stderr
    check_shape(out)
    assert out["peak_tflops"] is None and out["floor"]["fps_end_to_end"] is None  # CPU, no rate given: no floors
    assert "benchmarking 21" in r.stderr
    # 20 frames -> 6 latent frames (21 video frames) -> 2 chunks of 3
    assert (out["frames"], out["latent_frames"], out["blocks"], out["weights"]) == (21, 6, 2, "random")
    assert (out["height"], out["width"]) == (32, 64)
    assert out["text_load_s"] is None and out["text_tokens"] == random_weights.RANDOM_PROMPT_TOKENS


def test_random_weights_stay_finite_in_bfloat16(cf):
    out = bench_json(cf, "tiny-framewise.yaml", "--random-weights", "--frames", 5, "--dtype", "bfloat16")
    assert out["finite"] is True and out["dtype"] == "bfloat16" and out["blocks"] == 2


def test_table_renders(cf):
    r = cf("bench", "--preset", FIXTURES / "tiny-chunkwise.yaml", "--device", "cpu", "--repeat", 1,
           "--frames", 9, "--peak-tflops", 1)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""  # people's output is on stderr
    for text in ("end-to-end", "generation (DiT only)", "first decoded frame", "block latency p95", "cached weights",
                 "real time", "1 TFLOP/s", "attention"):
        assert text in r.stderr, text
    assert "assumed" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--height", 50], "--height must be a positive multiple of 16"),
    (["--width", 0], "--width must be a positive multiple of 16"),
    (["--repeat", 0], "--repeat must be at least 1"),
    (["--dtype", "float8"], "unknown dtype"),
    (["--frames", 0], "--frames must be positive"),
])
def test_bad_options_fail_cleanly(cf, args, message):
    r = cf("bench", "--preset", FIXTURES / "tiny-framewise.yaml", "--device", "cpu", *args)
    assert r.exit_code == 1
    assert message in r.stderr and "Traceback" not in r.output


def test_long_video_bench_runs_on_the_rolling_sampler(cf):
    r = cf("bench", "--preset", FIXTURES / "tiny-longvideo.yaml", "--device", "cpu", "--frames", 33, "--repeat", 1,
           "--json", "--random-weights")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["blocks"] == 3 and out["frames"] == 33 and out["dit_tflop"] > 0


def test_rolling_call_plan_follows_the_official_trace():
    """Spec §5.2 trace (252 latent frames): main-pass keys of windows 3, 4, 6, 10 and their clean passes."""
    preset = load_preset(FIXTURES / "tiny-longvideo.yaml")
    blocks = flops.dit_block_calls(preset, 252)
    assert len(blocks) == 84
    first = blocks[0]  # windows 0-3 and the clean pass of block 0 (window 3 finishes it)
    assert [c.keys for c in first] == [3, 6, 9, 12, 3] and [c.frames for c in first] == [3, 6, 9, 12, 3]
    assert blocks[1] == [flops.DiTCall(12, 15), flops.DiTCall(3, 6)]  # window 4: anchor + its own 12 frames
    assert blocks[3] == [flops.DiTCall(12, 21), flops.DiTCall(3, 12)]  # window 6
    assert blocks[7] == [flops.DiTCall(12, 21), flops.DiTCall(3, 21)]  # window 10: clean pass without the anchor
    assert blocks[-1] == [flops.DiTCall(3, 21)]  # the last window: main pass only


# --- the FLOP model ----------------------------------------------------------------------------------------------

def hand_framewise_9_frames() -> int:
    """tiny-framewise at 48×80, 3 latent frames, 4 steps, written out call by call.

    15 tokens per latent frame (6×10 latents, 2×2 patches); d 64, FFN 128, 2 layers, 512 text positions.
    """
    def call(keys: int) -> int:
        n, k = 15, 15 * keys
        per_layer = n * (12 * 64 * 64 + 4 * 64 * 128) + 4 * n * k * 64 + 4 * n * 512 * 64
        patch_and_head = 2 * n * 64 * 4 * 16 * 2
        time_mlp = 2 * (256 * 64 + 64 * 64 + 6 * 64 * 64)
        return 2 * per_layer + patch_and_head + time_mlp

    text_kv = 2 * 512 * (32 * 64 + 64 * 64) + 2 * 4 * 512 * 64 * 64
    block0 = 4 * call(1)
    block1 = call(1) + 4 * call(2)  # block 0's clean-context pass, then 4 steps over 2 frames of keys
    block2 = call(2) + 4 * call(3)  # no context pass after the last block
    return text_kv + block0 + block1 + block2


@pytest.mark.parametrize("preset, latent_frames", [("tiny-framewise.yaml", 3), ("tiny-chunkwise.yaml", 6),
                                                   ("tiny-framewise-2step.yaml", 4),
                                                   ("tiny-framewise-rolling.yaml", 9),
                                                   ("tiny-chunkwise-rolling.yaml", 15)])
def test_dit_flops_match_flop_counter_on_the_real_sampler(preset, latent_frames):
    """Run the production sampler and DiT on the meta device under FlopCounterMode: same count as the model."""
    from torch.utils.flop_counter import FlopCounterMode

    p = load_preset(FIXTURES / preset)
    cfg = p.configs.dit
    h, w = p.height // 8, p.width // 8
    with torch.device("meta"):
        dit = CausalWanDiT(cfg)
    engine = Engine(p, dit, None, torch.device("meta"), torch.float32)  # the production cache and step plan
    sampler = CausalSampler(dit, engine.schedule, engine.plan, p.block_frames, engine.new_cache(latent_frames))
    context = torch.empty(1, 7, cfg.text_dim, device="meta")
    noise = torch.empty(1, latent_frames, cfg.in_dim, h, w, device="meta")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        list(sampler.stream(noise, dit.text_kv(context), None))
    assert sum(flops.flop_plan(p, latent_frames).dit_blocks) == counter.get_total_flops()


def test_dit_flops_match_the_spec_at_full_size():
    """Spec §7.1–7.2 (which also counts an 8.86 GFLOP text MLP per call that cfcli runs once per prompt)."""
    cfg = DiTConfig()
    assert flops.dit_call_flops(cfg, 1560, flops.DiTCall(1, 21)) / 1e12 == pytest.approx(13.48, rel=2e-3)
    assert flops.dit_call_flops(cfg, 1560, flops.DiTCall(3, 21)) / 1e12 == pytest.approx(40.42, rel=2e-3)
    for name, tflop in (("chunkwise", 950.4), ("framewise", 930.9), ("framewise-2step", 562.2),
                        ("framewise-1step", 377.9)):
        p = load_preset(name)
        assert sum(flops.flop_plan(p, 21).dit_blocks) / 1e12 == pytest.approx(tflop, rel=2e-3), name
    assert flops.t5_flops(T5Config(), 512) / 1e12 == pytest.approx(4.85, rel=5e-3)


def test_taehv_bench_counts_the_tiny_decoder(cf):
    """--decoder taehv without downloaded weights: random full-size TAEHV, and the floors count its FLOPs."""
    wan = bench_json(cf, "tiny-framewise.yaml", "--frames", 9, "--random-weights")
    out = bench_json(cf, "tiny-framewise.yaml", "--frames", 9, "--random-weights", "--decoder", "taehv")
    check_shape(out)
    assert (out["decoder"], wan["decoder"], out["fast_path"]) == ("taehv", "wan", "eager")  # CPU: no fast path
    assert (out["levers"], wan["levers"]) == (["taehv"], [])  # CPU: the decoder is the only lever that runs
    first, later = flops.taehv_latent_flops(TAEHVConfig(), 6, 10)
    assert out["vae_decode_tflop"] * 1e12 == pytest.approx(first + 2 * later, rel=1e-12)
    assert out["vae_decode_tflop"] != wan["vae_decode_tflop"] and out["dit_tflop"] == wan["dit_tflop"]


def test_taehv_decode_flops_at_480p():
    """TAEHV: ~25× fewer FLOPs per latent frame than the Wan VAE (docs/performance.md)."""
    first, later = flops.taehv_latent_flops(TAEHVConfig(), 60, 104)
    assert first == later and later / 1e12 == pytest.approx(0.5442, rel=1e-3)


def test_vae_decode_flops_at_480p():
    """The decoder at 60×104 latents: pinned (docs/performance.md), and the first latent frame is the cheaper one."""
    first, later = flops.vae_latent_flops(model_configs({}), 60, 104)
    assert first / 1e12 == pytest.approx(4.352, rel=1e-3)
    assert later / 1e12 == pytest.approx(13.550, rel=1e-3)
    quarter = flops.vae_latent_flops(model_configs({}), 30, 52)[1]
    assert 0.24 < quarter / later < 0.26  # convolutions scale with the pixel count


def test_block_calls_of_a_rolling_cache():
    """Past the 21-frame horizon the cache rolls: keys stop growing at the window."""
    p = load_preset("chunkwise")
    calls = flops.dit_block_calls(p, 30)
    assert [c[-1].keys for c in calls] == [3, 6, 9, 12, 15, 18, 21, 21, 21, 21]
    assert [len(c) for c in calls] == [5] * 9 + [4]  # each block's steps and its clean pass; none after the last


def test_percentile_is_numpy_linear():
    assert bench.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert bench.percentile([5.0], 95) == 5.0
    assert bench.percentile([0.0, 10.0], 95) == pytest.approx(9.5)
