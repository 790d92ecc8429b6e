"""The KV-cache protocol (`cfcli.models.cache.DiTCache`): every cache implements it; the rolling cache's clean pass is
the explicit `refresh` of `begin`; the CUDA-graph wrapper keys its graphs by `plan_key()` and runs eagerly where a
cache has none (a CPU stand-in for the graphs, as in tests/test_fast.py)."""

import inspect

import pytest
import torch

from cfcli.models.cache import DiTCache
from cfcli.models.kv_cache import KVCache
from cfcli.models.kv_quant import QuantKVCache
from cfcli.models.rolling_cache import RollingKVCache
from cfcli.pipeline.engine import Engine
from cfcli.presets import load_preset
from conftest import FIXTURES


def identity_rope(start, frames):
    return torch.stack([torch.ones(frames, 1, 1), torch.zeros(frames, 1, 1)])


def rolling(attn: int = 21) -> RollingKVCache:
    return RollingKVCache(1, 1, 1, 1, 2, anchor_frames=3, attn_frames=attn, rope=identity_rope)


CACHES = [lambda: KVCache(2, 1, 4, 3, 2, 4), lambda: QuantKVCache(2, 1, 4, 3, 2, 4), rolling]


@pytest.mark.parametrize("make", CACHES)
def test_every_cache_implements_the_protocol(make):
    cache = make()
    assert isinstance(cache, DiTCache)
    for name in ("begin", "update", "plan_key", "reset", "end"):
        want = inspect.signature(getattr(DiTCache, name)).parameters
        got = inspect.signature(getattr(type(cache), name)).parameters
        assert [(p.name, p.default) for p in got.values()] == [(p.name, p.default) for p in want.values()], name


def tags(start: int, frames: int) -> torch.Tensor:
    return torch.arange(start, start + frames, dtype=torch.float32).view(1, frames, 1, 1).expand(1, frames, 1, 2)


def call(cache, start: int, frames: int, refresh: bool, keys: list | None = None):
    """One stand-in DiT call whose keys/values carry their frame index; returns the frames attended."""
    cache.begin(start, frames, refresh)
    if keys is not None:
        keys.append(cache.plan_key())
    _, v = cache.update(0, tags(start, frames), tags(start, frames), raw_k=tags(start, frames) + 1000)
    cache.end()
    return v[0, :, 0, 0].int().tolist()


def test_only_a_refresh_stores_into_the_rolling_cache():
    cache = rolling()
    assert call(cache, 0, 6, refresh=False) == list(range(6))  # a main pass at frame 0 attends to itself only
    assert cache.kv.abs().sum() == 0  # and stores nothing
    assert call(cache, 0, 3, refresh=True) == [0, 1, 2]
    assert cache.kv[0, 0, 0, :3, 0, 0].tolist() == [1000.0, 1001.0, 1002.0]  # the anchor, stored un-roped
    assert call(cache, 3, 6, refresh=False) == [0, 1, 2, 3, 4, 5, 6, 7, 8]  # anchor + the window's own frames
    assert cache.kv[0, :, 0, 3:].abs().sum() == 0  # the main pass wrote nothing past the anchor
    assert call(cache, 3, 3, refresh=True) == [0, 1, 2, 3, 4, 5]  # the next block joins the anchor
    assert cache.frames == 6 and cache.plan_key() is None


def test_refresh_changes_nothing_in_the_causal_cache():
    plain, refreshed = (KVCache(1, 1, 3, 1, 1, 2, sink_frames=1, rolling=True) for _ in range(2))
    plain_keys, refreshed_keys = [], []
    for start in range(6):
        attended = call(plain, start, 1, False, plain_keys)
        assert call(refreshed, start, 1, True, refreshed_keys) == attended
    assert attended == [0, 4, 5]  # the sink and the newest frames
    assert plain_keys == refreshed_keys  # a block's steps and its clean pass share one graph


class RerunOnReplay:
    """Stand-in for `CudaGraphs` (see tests/test_fast.py): a replay reruns the captured call on its static buffers."""

    def capture(self, fn):
        from cfcli.pipeline.fast import CapturedCall

        captured = CapturedCall(None, None)
        captured.replay = lambda: setattr(captured, "out", fn())
        return captured

    def reset(self):
        pass


@pytest.mark.parametrize("preset, graphs", [("tiny-longvideo.yaml", 0), ("tiny-chunkwise.yaml", 4)])
def test_graphs_are_keyed_by_the_protocol(preset, graphs):
    """Rolling cache: no plan key, every call eager; causal cache: one graph per block (its steps and clean pass share
    a plan; captured on the block's second call): 4 blocks of 3 latent frames."""
    from cfcli.pipeline.fast import GraphedDiT

    engine = Engine.load(load_preset(FIXTURES / preset), "cpu", torch.float32)
    text_kv = engine.text_kv(torch.randn(1, 8, engine.dit.cfg.text_dim, generator=torch.Generator().manual_seed(0)))

    def run():
        return torch.cat([c.latents for c in engine.generate(text_kv, 12, seed=1, decode=False)])

    eager = run()
    engine.runner = runner = GraphedDiT(engine.dit, capturer=RerunOnReplay())
    assert torch.equal(run(), eager)
    assert runner.captures == graphs
