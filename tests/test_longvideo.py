"""The long-video model's Rolling Forcing sampler: official outputs, window schedule, cache bookkeeping, limits.

The numerics test runs the real CLI on the tiny long-video fixture (the official pipeline's outputs on random
weights). The schedule and bookkeeping tests drive the real sampler and cache with a stand-in DiT whose tokens carry
their frame index, so what each call attends to can be read back and compared with the spec's trace (§5.2).
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cfcli.errors import CfError
from cfcli.models.rolling_cache import RollingKVCache
from cfcli.pipeline.rolling import RollingSampler, windows
from cfcli.pipeline.sampler import StepPlan
from cfcli.pipeline.schedule import FlowSchedule

FIXTURES = Path(__file__).parent / "fixtures"
PRESET = FIXTURES / "tiny-longvideo.yaml"
CASE = json.loads((FIXTURES / "longvideo.json").read_text())["cases"][0]
TAU = (1000.0, 937.5, 833.3333129882812, 625.0)


@pytest.fixture
def cf(tmp_path, monkeypatch):
    """`cf ARGS...` in-process with its own cfcli home."""
    from cfcli.cli import app

    monkeypatch.setenv("CF_HOME", str(tmp_path / "cf-home"))
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def engine():
    from cfcli.pipeline.engine import Engine
    from cfcli.presets import load_preset

    return Engine.load(load_preset(PRESET), "cpu", torch.float32)


@pytest.fixture(scope="module")
def text_kv(engine):
    cfg = engine.dit.cfg
    context = torch.randn(1, 8, cfg.text_dim, generator=torch.Generator().manual_seed(0))
    return engine.text_kv(context)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# --- official outputs through the CLI ------------------------------------------------------------------------------

def test_cli_matches_official_rolling_forcing(cf, tmp_path):
    from cfcli.pipeline.video import read_video

    want = load_file(str(FIXTURES / "longvideo.safetensors"))
    latents, out = tmp_path / "lv.safetensors", tmp_path / "lv.mkv"
    r = cf("generate", CASE["prompt"], "--preset", PRESET, "--seed", CASE["seed"], "--frames", CASE["video_frames"],
           "--device", "cpu", "--dtype", "float32", "--save-latents", latents, "--out", out, "--codec", "ffv1",
           "--quiet")
    assert r.exit_code == 0, r.output
    got = load_file(str(latents))["latents"]
    ref = want["longvideo_t2v.latents"]
    assert got.shape == ref.shape == (CASE["latent_frames"], 16, 6, 10)
    assert rel_err(got, ref) <= 1e-4
    frames = read_video(out).frames
    ref_px = want["longvideo_t2v.pixels"]
    assert frames.shape == ref_px.shape == (CASE["video_frames"], 3, 48, 80)
    assert (frames.int() - ref_px.int()).abs().max() <= 2


# --- window schedule ----------------------------------------------------------------------------------------------

def official_windows(num_blocks: int, depth: int) -> list[tuple[int, int]]:
    """(start, end) blocks of each window as `inference_rolling_forcing` builds them."""
    return [(max(0, w - depth + 1), min(num_blocks - 1, w)) for w in range(num_blocks + depth - 1)]


@pytest.mark.parametrize("num_blocks", [1, 2, 3, 4, 10, 84])
def test_every_block_takes_every_step_once_in_order(num_blocks):
    plan = windows(num_blocks, 4)
    assert len(plan) == num_blocks + 3
    if num_blocks >= 4:
        assert [(w.first, w.last) for w in plan] == official_windows(num_blocks, 4)
    ages = {b: [w.age(b) for w in plan if w.first <= b <= w.last] for b in range(num_blocks)}
    assert all(a == [0, 1, 2, 3] for a in ages.values())
    assert [w.first for w in plan if w.finishes] == list(range(num_blocks))


# --- bookkeeping against the spec's trace -------------------------------------------------------------------------

class FrameTaggedDiT:
    """Stand-in DiT on 1-token frames: keys/values carry the absolute frame index; records what each call attends."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, x, t, text_kv, cache, start_frame, refresh=False):
        b, f = x.shape[:2]
        tag = torch.arange(start_frame, start_frame + f, dtype=torch.float32).view(1, f, 1, 1).expand(b, f, 1, 2)
        cache.begin(start_frame, f, refresh)
        k, v = cache.update(0, tag.clone(), tag.clone(), raw_k=tag + 1000)  # "raw" keys told apart
        cache.end()
        self.calls.append({"start": start_frame, "frames": f, "clean": refresh, "t": t[0].tolist(),
                           "keys": v[0, :, 0, 0].int().tolist()})
        return torch.zeros_like(x)


def run_tagged(num_frames: int):
    anchors: list[int] = []

    def rope(start, frames):  # identity rotation; records where the anchor is placed
        anchors.append(start)
        return torch.stack([torch.ones(frames, 1, 1), torch.zeros(frames, 1, 1)])

    dit = FrameTaggedDiT()
    cache = RollingKVCache(1, 1, 1, 1, 2, anchor_frames=3, attn_frames=21, rope=rope)
    sampler = RollingSampler(dit, FlowSchedule(5.0), StepPlan(TAU), 3, cache)
    noise = torch.randn(1, num_frames, 1, 1, 1)
    outs = list(sampler.stream(noise, None, torch.Generator().manual_seed(0)))
    return dit.calls, anchors, outs, cache


def test_attention_follows_the_official_trace():
    calls, _, outs, cache = run_tagged(252)
    main = [c for c in calls if not c["clean"]]
    clean = {c["start"]: c for c in calls if c["clean"]}
    assert len(main) == 87 and len(outs) == 84 and len(clean) == 83  # no clean pass after the last block
    rng = lambda a, b: list(range(a, b + 1))  # noqa: E731
    assert main[0]["keys"] == rng(0, 2) and main[0]["t"] == [1000.0] * 3
    assert main[3]["keys"] == rng(0, 11) and main[3]["t"] == [t for t in reversed(TAU) for _ in range(3)]
    assert main[4]["keys"] == rng(0, 2) + rng(3, 14)  # anchor + window
    assert main[6]["keys"] == rng(0, 2) + rng(3, 8) + rng(9, 20)
    assert main[10]["keys"] == rng(0, 2) + rng(15, 20) + rng(21, 32)
    assert main[11]["keys"] == rng(0, 2) + rng(18, 23) + rng(24, 35)
    assert main[86]["keys"] == rng(0, 2) + rng(234, 248) + rng(249, 251) and main[86]["t"] == [625.0] * 3
    assert main[85]["t"] == [625.0] * 3 + [833.3333129882812] * 3
    assert clean[0]["keys"] == rng(0, 2)  # window 3: block 0 attends to itself
    assert clean[3]["keys"] == rng(0, 5)  # window 4
    assert clean[9]["keys"] == rng(0, 11)  # window 6
    assert clean[21]["keys"] == rng(3, 23)  # window 10: 21 frames, no anchor
    assert clean[24]["keys"] == rng(6, 26)  # window 11, after the first eviction
    assert clean[246]["keys"] == rng(228, 248)  # last clean pass
    assert all(c["t"] == [0.0] * 3 for c in clean.values())
    assert cache.frames == 24 and cache.kv.shape[3] == 24


def test_anchor_is_stored_unroped_and_placed_before_the_working_cache():
    _, anchors, _, cache = run_tagged(60)
    # main passes of windows 4–6 place it at 0; later at window start − working frames − 3; clean passes at 0
    main_positions = [p for p in anchors if p != 0]
    assert main_positions[:3] == [3, 6, 9]  # windows 7, 8, 9 (start 12, 15, 18; 6 working frames)
    keys = cache.kv[0, 0, 0, :, 0, 0].tolist()
    assert keys[:3] == [1000.0, 1001.0, 1002.0] and max(keys[3:]) < 1000  # only the anchor is kept un-roped


# --- memory stays flat; length limit --------------------------------------------------------------------------------

def test_cache_is_fixed_size_however_long_the_video(engine, text_kv, monkeypatch):
    made: list = []
    new_cache = engine.new_cache
    monkeypatch.setattr(engine, "new_cache", lambda n: made.append(new_cache(n)) or made[-1])
    counts, footprints = [], []
    for latent_frames in (30, 60):
        chunks = list(engine.generate(text_kv, latent_frames, seed=1, decode=False))
        cache = made[-1]
        assert isinstance(cache, RollingKVCache)
        counts.append(len(chunks))
        assert all(c.latents.shape == (3, 16, 6, 10) and torch.isfinite(c.latents).all() for c in chunks)
        footprints.append((tuple(cache.kv.shape), cache.kv.nbytes, cache.frames))
    assert counts == [10, 20]
    tokens = engine.dit.frame_tokens(*engine.latent_hw)
    assert footprints[0] == footprints[1]
    assert footprints[0][0][3] == (3 + 21) * tokens and footprints[0][2] == 24


def test_too_many_frames_is_a_clear_error(engine, text_kv, cf, tmp_path):
    assert isinstance(engine.new_cache(1023), RollingKVCache)  # the longest video still fits
    with pytest.raises(CfError) as err:
        next(engine.generate(text_kv, 1026, seed=0, decode=False))
    assert "position table" in err.value.message and "4089" in err.value.hint
    out = tmp_path / "long.mkv"
    r = cf("generate", CASE["prompt"], "--preset", PRESET, "--frames", 4093, "--seed", 0, "--device", "cpu",
           "--dtype", "float32", "--out", out, "--codec", "ffv1", "--quiet")
    assert r.exit_code == 1 and "4089" in r.output and "Traceback" not in r.output
    assert not out.exists()
