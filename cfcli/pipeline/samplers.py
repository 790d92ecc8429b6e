"""The sampler table: a preset's `sampler` name → the class that runs it, the KV cache it runs on, its DiT call plan,
what it allows.

Whatever depends on the sampler asks this table instead of comparing names: the engine (sampler and cache), the FLOP
model and `cf bench` (the sampler's own call plan), the memory planner (cache size, whether it can be stored in 8
bits), the CLI (whether a run may start from given frames, which blocks a prompt switch reaches, whether it may land
between denoising steps).
"""

from collections.abc import Callable
from dataclasses import dataclass

from cfcli.errors import CfError
from cfcli.models.cache import DiTCache
from cfcli.models.kv_cache import KVCache
from cfcli.models.rolling_cache import RollingKVCache
from cfcli.pipeline.rolling import RollingSampler, rolling_cache
from cfcli.pipeline.sampler import CausalSampler, DiTCall, StepPlan
from cfcli.presets import Preset


def attention_window(preset: Preset) -> int:
    """Latent frames attended once the cache rolls: the preset's `local_attn_frames`, else the trained horizon."""
    return preset.local_attn_frames if preset.local_attn_frames != -1 else preset.horizon_frames


def cache_window(preset: Preset, total_frames: int) -> tuple[int, bool]:
    """(latent frames the causal KV cache holds, whether it rolls): global attention over the whole video up to the
    horizon the model was trained on, the `attention_window` beyond it."""
    rolling = preset.local_attn_frames != -1 or total_frames > preset.horizon_frames
    return (attention_window(preset) if rolling else total_frames), rolling


def causal_layout(preset: Preset, total_frames: int, kv_format: str | None) -> tuple:
    return (*cache_window(preset, total_frames), kv_format)


def causal_cache(engine, layout: tuple) -> KVCache:
    """The block-causal sampler's cache (`KVCache`, or `QuantKVCache` in 8 bits when the engine's `kv_format` says)."""
    p, cfg, dit = engine.preset, engine.dit.cfg, engine.dit
    capacity, rolling, kv_format = layout
    kind, extra = KVCache, {}
    if kv_format is not None:
        from cfcli.models.kv_quant import QuantKVCache

        kind, extra = QuantKVCache, {"fmt": kv_format}
    return kind(cfg.num_layers, 1, capacity, dit.frame_tokens(*engine.latent_hw), cfg.num_heads, cfg.head_dim,
                sink_frames=p.sink_frames if rolling else 0, rolling=rolling, dtype=engine.dtype,
                device=engine.device, **extra)


def long_video_layout(preset: Preset, total_frames: int, kv_format: str | None) -> tuple:
    return ("rolling",)  # one anchor block and the attention window, whatever the length


def long_video_cache(engine, layout: tuple) -> RollingKVCache:
    p = engine.preset
    return rolling_cache(engine.dit, engine.latent_hw, p.block_frames, attention_window(p), len(p.steps),
                         dtype=engine.dtype, device=engine.device)


@dataclass(frozen=True)
class SamplerKind:
    """One entry of the table.

    `layout(preset, total_frames, kv_format)` is a hashable key of the cache a video needs: the engine reuses its
    buffer while the key stays equal. `make_cache(engine, layout)` allocates one for an `Engine`'s models.
    """

    name: str
    label: str  # how messages name it
    sampler: type[CausalSampler] | type[RollingSampler]
    layout: Callable[[Preset, int, str | None], tuple]
    make_cache: Callable[[object, tuple], DiTCache]
    cache_frames: Callable[[Preset, int], int]  # latent frames the cache holds for a video of this length
    window: Callable[[Preset, int], int]  # latent frames a call attends to at most (the plan's `window`)
    starts_from_frames: bool  # can be primed with given latents (I2V, extending a clip)
    quantizable_cache: bool  # the cache can be stored in 8 bits (`cfcli.models.kv_quant`)
    steps_between: bool  # a prompt switch may land between a block's denoising steps (`TIME@K`)
    scratch_layers: int = 0  # extra layers' worth of keys/values the cache assembles per call

    def in_flight_frames(self, preset: Preset) -> int:
        """Latent frames before a prompt switch's block that are still being denoised when it lands, and so finish
        under the new prompt."""
        return self.sampler.in_flight_blocks(len(preset.steps)) * preset.block_frames

    def calls(self, preset: Preset, latent_frames: int, context_frames: int = 0) -> list[list[DiTCall]]:
        """The sampler's call plan for `latent_frames` new frames after `context_frames` given ones (only the step
        counts of the preset's schedule matter here)."""
        first = tuple(preset.first_block_steps) if preset.first_block_steps else None
        window = self.window(preset, context_frames + latent_frames)
        return self.sampler.call_plan(StepPlan(tuple(preset.steps), first), preset.block_frames, latent_frames,
                                      window, context_frames)


SAMPLERS: dict[str, SamplerKind] = {
    "causal": SamplerKind(
        "causal", "block-causal", CausalSampler, layout=causal_layout, make_cache=causal_cache,
        cache_frames=lambda p, n: cache_window(p, n)[0], window=lambda p, n: cache_window(p, n)[0],
        starts_from_frames=True, quantizable_cache=True, steps_between=True),
    "rolling": SamplerKind(
        "rolling", "long-video (rolling)", RollingSampler, layout=long_video_layout, make_cache=long_video_cache,
        cache_frames=lambda p, n: p.block_frames + attention_window(p), window=lambda p, n: attention_window(p),
        starts_from_frames=False, quantizable_cache=False, steps_between=False, scratch_layers=1),
}


def sampler_kind(preset: Preset) -> SamplerKind:
    """The table entry of the preset's sampler (its name was checked when the preset loaded)."""
    kind = SAMPLERS.get(preset.sampler)
    if kind is None:
        raise CfError(f"unknown sampler {preset.sampler!r}", f"use one of: {', '.join(SAMPLERS)}")
    return kind
