"""CUDA graphs of whole DiT calls (`cfcli.pipeline.fast.GraphedDiT`), the KV-cache plans they are keyed on, and the
compiled block stages (`compile_blocks`).

Compilation is checked on the CPU against the official outputs (inductor compiles for the CPU too). The graph
bookkeeping runs on the CPU with a stand-in capturer of the same contract; real graphs need a GPU, so those tests run
where CUDA is present.
"""

import shutil

import pytest
import torch

from cfcli.models.kv_cache import KVCache
from cfcli.pipeline.engine import Engine, EngineOptions

from conftest import fixture_engine, rel_err

CUDA = torch.cuda.is_available()


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

