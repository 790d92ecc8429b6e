"""The sampler table (`cfcli.pipeline.samplers`): names, caches, what each sampler allows, and the sizes the memory
planner reads from it, against the caches the engine really allocates (tiny presets on the meta device)."""

import pytest
import torch

from cfcli import presets
from cfcli.models.build import build_models
from cfcli.models.kv_cache import KVCache
from cfcli.models.kv_quant import QuantKVCache
from cfcli.models.rolling_cache import RollingKVCache
from cfcli.pipeline.engine import Engine
from cfcli.pipeline.memory import footprint
from cfcli.pipeline.rolling import RollingSampler
from cfcli.pipeline.sampler import CausalSampler
from cfcli.pipeline.samplers import SAMPLERS, sampler_kind
from cfcli.presets import load_preset
from conftest import FIXTURES


def meta_engine(preset: str) -> Engine:
    p = load_preset(FIXTURES / preset)
    return Engine(p, build_models(p).dit, None, torch.device("meta"), torch.float32)


def test_preset_names_are_the_table():
    """presets.py stays torch-free with its own tuple of names; it must list exactly the table's."""
    assert presets.SAMPLERS == tuple(SAMPLERS)


@pytest.mark.parametrize("preset, cls, cache_cls, starts, in_flight", [
    ("tiny-framewise.yaml", CausalSampler, KVCache, True, 0),
    ("tiny-chunkwise.yaml", CausalSampler, KVCache, True, 0),
    ("tiny-longvideo.yaml", RollingSampler, RollingKVCache, False, 9),  # 3 older blocks of 3 frames in a 4-step window
])
def test_each_preset_gets_its_sampler_and_cache(preset, cls, cache_cls, starts, in_flight):
    engine = meta_engine(preset)
    kind = sampler_kind(engine.preset)
    assert (kind.sampler, kind.starts_from_frames, kind.in_flight_frames(engine.preset)) == (cls, starts, in_flight)
    assert type(engine.new_cache(9)) is cache_cls


def test_a_8bit_format_gives_a_quantised_cache_of_its_own_layout():
    engine = meta_engine("tiny-framewise.yaml")
    plain = engine.new_cache(9)
    engine.kv_format = "int8"
    quant = engine.new_cache(9)
    assert type(quant) is QuantKVCache and quant.kv.dtype == torch.int8 and quant is not plain
    assert engine.new_cache(9) is quant  # same layout: the buffer is reused


def test_the_long_video_sampler_refuses_given_frames():
    from cfcli.errors import CfError

    engine = meta_engine("tiny-longvideo.yaml")
    with pytest.raises(CfError, match="long-video \\(rolling\\) sampler cannot start from given frames"):
        next(engine.generate(None, 3, seed=0, context=torch.zeros(1, 3, 16, 6, 10)))


@pytest.mark.parametrize("preset, frames", [("tiny-framewise.yaml", 9), ("tiny-framewise.yaml", 30),
                                            ("tiny-longvideo.yaml", 60)])
def test_memory_planner_sizes_the_cache_the_engine_allocates(preset, frames):
    engine = meta_engine(preset)
    cache = engine.new_cache(frames)
    scratch = cache._keys.nbytes if isinstance(cache, RollingKVCache) else 0  # one layer's assembled keys/values
    assert footprint(engine.preset, frames, torch.float32).kv == cache.kv.nbytes + scratch


# --- the call plan is what the sampler really does -------------------------------------------------------------------

class CallRecorder:
    """Wraps the real DiT: records each call's (start, frames, frames attended in layer 0, refresh)."""

    def __init__(self, dit):
        self.dit, self.calls = dit, []

    def __call__(self, x, t, text_kv, cache, start_frame, refresh=False):
        attended = []
        update = cache.update

        def spy(layer, k, v, raw_k=None):
            keys, values = update(layer, k, v, raw_k)
            if layer == 0:
                attended.append(keys.shape[1] // cache.frame_tokens)
            return keys, values

        cache.update = spy  # shadows the method for this call only
        try:
            out = self.dit(x, t, text_kv, cache, start_frame, refresh)
        finally:
            del cache.update
        self.calls.append((start_frame, x.shape[1], attended[0], refresh))
        return out


def as_tuples(calls):
    return [(c.start, c.frames, c.keys, c.refresh) for c in calls]


def hand_outs(groups, clean_first: bool) -> list[int]:
    """Calls made before each hand-out. The causal sampler's block is handed out once its group has run, its clean
    pass included (`clean_first`: the engine runs it behind the block's decode, `commit_now`); the rolling sampler's
    after its last window, its clean pass following; primed frames once their group has run."""
    made, at = 0, []
    for group in groups:
        last = len(group) - 1 if clean_first else max((i for i, c in enumerate(group) if not c.refresh),
                                                      default=len(group) - 1)
        at.append(made + last + 1)
        made += len(group)
    return at


@pytest.mark.parametrize("preset, latent_frames, context_frames", [
    ("tiny-framewise.yaml", 4, 0),
    ("tiny-framewise-2step.yaml", 4, 0),  # a separate first-block schedule
    ("tiny-framewise-rolling.yaml", 9, 0),  # the causal cache rolls past its 6-frame window
    ("tiny-chunkwise.yaml", 6, 3),  # primed with a given block first
    ("tiny-chunkwise-rolling.yaml", 9, 6),  # primed, then rolling
    ("tiny-longvideo.yaml", 36, 0),  # the rolling sampler, past its first eviction
])
def test_call_plan_is_what_the_sampler_calls(preset, latent_frames, context_frames):
    p = load_preset(FIXTURES / preset)
    engine = Engine.load(p, "cpu", torch.float32)
    engine.runner = recorder = CallRecorder(engine.dit)
    text_kv = engine.text_kv(torch.randn(1, 8, engine.dit.cfg.text_dim, generator=torch.Generator().manual_seed(0)))
    context = torch.randn(1, context_frames, 16, *engine.latent_hw) if context_frames else None
    handed = []
    for _ in engine.generate(text_kv, latent_frames, seed=0, context=context, decode=False):
        handed.append(len(recorder.calls))
    plan = sampler_kind(p).calls(p, latent_frames, context_frames)
    assert recorder.calls == as_tuples(c for group in plan for c in group)
    assert handed == hand_outs(plan, sampler_kind(p).sampler is CausalSampler)
