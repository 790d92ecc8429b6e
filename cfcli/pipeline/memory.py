"""The memory planner: from a preset, a video length and a GPU memory budget to where each part lives.

Plans, largest first (`PLANS`; the first whose estimated peak fits the budget is used):

- `exact`: today's numerics. DiT and KV cache in the run's dtype; umT5 resident when it fits, else streamed layer by
  layer from host memory (`cfcli.models.t5_stream`: same kernels, same features); CUDA graphs and compiled blocks only
  when their memory fits; on small budgets the decoder goes frame by frame after its time upsampling, then keeps its
  causal caches in host memory (same latents; the decoder's kernels may change, so pixels within rounding).
- `low`: DiT block linears int8 weight-only (`cfcli.ops.weight_quant`), KV cache int8 with per-token-per-head scales
  (`cfcli.models.kv_quant`), umT5 streamed, compiled blocks but no CUDA graphs.
- `low+offload`: `low` with the last k DiT blocks kept in host memory and streamed in per call
  (`cfcli.models.offload`), k the fewest that fit.

Every size comes from the preset's model configs (modules built on the meta device) and the cache geometry; the
decoder's working set is traced on the meta device (`decoder_peak`), op by op, at the preset's resolution, once per
machine (`cfcli.pipeline.traced` keeps the figures). The estimate counts tensors the allocator hands out, plus
`HEADROOM` of the budget for fragmentation and kernel workspaces.
"""

import functools
import math
import os
import sys
import weakref
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from cfcli.errors import CfError
from cfcli.presets import Preset

GIB = 2**30
HEADROOM = 0.03  # of the budget: allocator fragmentation, cuBLAS/cuDNN workspaces
LOW_VRAM_GIB = 7.0  # what `--low-vram` plans for without `--max-vram` (an 8 GB card less the desktop's share)
KV_FORMAT = "int8"  # the low plans' KV cache (`cfcli.models.kv_quant.FORMATS`)
TEXT_PLACES = {"resident": "on the GPU", "stream": "streamed layer by layer", "cpu": "on the CPU"}
KEPT_PLACES = {"resident": "kept loaded on the GPU", "stream": "kept in host memory, streamed layer by layer",
               "cpu": "kept loaded on the CPU"}


@dataclass(frozen=True)
class MemoryPlan:
    """Where each part lives; `need` is the estimated peak in bytes, `budget` what it was planned for."""

    name: str
    weights: str  # "model": the run's dtype | "int8"
    kv: str  # "model" | "int8" | "fp8"
    text: str  # umT5: "resident" (on the GPU) | "stream" (layer by layer from host memory) | "cpu" (`with_kept_text`)
    graphs: bool
    compile: bool
    offload_blocks: int = 0
    lean: bool = False  # decoder frames one at a time after time upsampling, text K/V projections in host memory
    host_decoder_cache: bool = False  # the decoder's causal caches in host memory, each layer's fetched as it runs
    need: int = 0
    budget: int | None = None
    text_kept: bool = False  # umT5 stays loaded beside the DiT between prompts (`with_kept_text`)

    def describe(self) -> str:
        parts = [f"DiT {'int8 weights' if self.weights == 'int8' else 'full precision'}",
                 f"KV cache {self.kv if self.kv != 'model' else 'full precision'}",
                 f"umT5 {KEPT_PLACES[self.text] if self.text_kept else TEXT_PLACES[self.text]}"]
        if self.offload_blocks:
            parts.append(f"{self.offload_blocks} DiT blocks streamed from host memory")
        if self.lean:
            parts.append("frame-by-frame decoder" + (" with its caches in host memory" if self.host_decoder_cache
                                                     else ""))
        if not self.graphs:
            parts.append("no CUDA graphs")
        budget = f" of {self.budget / GIB:.1f} GiB" if self.budget is not None else ""
        return f"{self.name} (~{self.need / GIB:.1f} GiB{budget}: {', '.join(parts)})"

    def places_alike(self, other: "MemoryPlan | None") -> bool:
        """Whether `other` puts the engine's parts where this plan does (estimates, budget and umT5, which the prompt
        encoder places, aside): an engine loaded under one runs under the other."""
        same = dict(need=0, budget=None, text="", text_kept=False)
        return other is not None and replace(self, **same) == replace(other, **same)

    def limit(self, options):
        """`options` (an `EngineOptions`) as this plan runs them: the fast path only where the plan allows it."""
        return replace(options, compile=options.compile and self.compile, graphs=options.graphs and self.graphs)


# ---------------------------------------------------------------------------------------------------------------
# Sizes of the parts

class TracedPeak(TorchDispatchMode):
    """Bytes of tensors alive at once while code runs under it (meta tensors welcome): each new storage counts from
    the op that makes it until its last tensor is freed."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, n: int) -> None:
        self._seen.discard(key)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t._is_view():
                key, n = t.untyped_storage()._cdata, t.untyped_storage().nbytes()
                if key not in self._seen:
                    self._seen.add(key)
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, key, n)
        return out


@functools.lru_cache(maxsize=8)
def decoder_peak(decoder: str, configs, h: int, w: int, dtype: torch.dtype, split: bool = False) -> tuple[int, int]:
    """(Peak bytes of a streaming decode, causal caches included, of latent frames at h×w; the same with the caches
    in host memory), traced on meta: the first latent frame, then a later one (4 output frames, the larger). With the
    caches away only the running layer's past (and its update) is on the device. `configs`: the preset's
    `cfcli.models.build.ModelConfigs`."""
    from cfcli.models import taehv, vae
    from cfcli.pipeline import traced

    code = traced.code_digest(vae, taehv, sys.modules[__name__])
    return traced.remember(("decoder_peak", decoder, configs, h, w, str(dtype), split), code,
                           lambda: _trace_decoder_peak(decoder, configs, h, w, dtype, split))


def _trace_decoder_peak(decoder: str, configs, h: int, w: int, dtype: torch.dtype, split: bool) -> tuple[int, int]:
    from cfcli.models.build import build_vae
    from cfcli.models.taehv import TAEHV, TAEHVConfig

    with torch.device("meta"):
        model = (TAEHV(TAEHVConfig()) if decoder == "taehv" else build_vae(configs)).to(dtype)
    model.lean(split, False)
    channels = TAEHVConfig().latent_channels if decoder == "taehv" else configs.vae.z_dim
    z = torch.empty(1, 1, channels, h, w, device="meta", dtype=dtype)
    with torch.inference_mode(), TracedPeak() as trace:
        stream = model.stream_decoder()
        for _ in range(2):
            stream.decode(z)
    # TAEHV's memory (a few small frames a layer) has no host-cache form: it carries nothing, the same peak either way.
    caches = [t.untyped_storage().nbytes() for t in stream.carried()]
    return trace.peak, trace.peak - sum(caches) + 2 * max(caches, default=0)


def module_bytes(module: nn.Module, dtype: torch.dtype, int8: bool = False) -> int:
    """Bytes of `module`'s parameters in `dtype`; with `int8`, its DiT block linears as `Int8Linear`s."""
    from cfcli.models.dit import block_linear

    size = dtype.itemsize
    total = sum(p.numel() * size for p in module.parameters())
    if int8:
        for name, m in module.named_modules():
            if block_linear(name, m):
                total -= m.weight.numel() * (size - 1) - m.out_features * 4  # int8 weight + float32 row scales
    return total


@dataclass(frozen=True)
class Footprint:
    """Bytes of each part of a run (`footprint`)."""

    dit: int
    dit_int8: int
    block: int  # one DiT block
    block_int8: int
    blocks: int  # how many
    kv: int
    kv_quant: int  # the low plans' KV cache (== kv where it cannot be quantised: the rolling sampler)
    dit_work: int  # transient of one DiT call
    dequant_work: int  # the quantised cache's dequantised read slice (one layer) and an int8 weight in dtype
    text_kv: int
    text_proj: int  # the blocks' cross-attention K/V projections (used once per prompt; parked by lean plans)
    decoder: int  # VAE (and TAEHV) weights
    decode_work: int
    decode_work_split: int  # with `Decoder3d.split_frames`
    decode_work_host: int  # split, and the causal caches in host memory
    text_resident: int  # umT5 whole, with its activations
    text_stream: int  # two umT5 blocks and the final norm, with the activations
    kv_quantizable: bool = True  # the sampler's cache can be stored in 8 bits (not the rolling sampler's)

    def generation(self, plan: MemoryPlan) -> int:
        low = plan.weights == "int8"
        dit = (self.dit_int8 - plan.offload_blocks * self.block_int8 + 2 * self.block_int8 * bool(plan.offload_blocks)
               if low else self.dit - self.text_proj * plan.lean)
        kv = self.kv_quant if plan.kv != "model" else self.kv
        work = self.dit_work * (1 + plan.graphs) + self.dequant_work * low  # the graph pool holds one call's work
        decode = (self.decode_work_host if plan.host_decoder_cache else self.decode_work_split if plan.lean
                  else self.decode_work)
        return dit + kv + work + self.text_kv + self.decoder + decode

    def text(self, plan: MemoryPlan) -> int:
        return self.text_resident if plan.text == "resident" else self.text_stream

    def load(self, plan: MemoryPlan) -> int:
        """The DiT is loaded in the run's dtype, then quantised and offloaded."""
        return self.dit + self.decoder + (self.block if plan.weights == "int8" else 0)

    def need(self, plan: MemoryPlan) -> int:
        return max(self.text(plan), self.generation(plan), self.load(plan))


@functools.lru_cache(maxsize=16)
def _meta_models(configs) -> tuple:
    """(DiT, umT5, VAE) of `configs` (a `cfcli.models.build.ModelConfigs`) on the meta device."""
    from cfcli.models.build import build_models, build_text_encoder

    models = build_models(configs)
    return models.dit, build_text_encoder(configs), models.vae


def footprint(preset: Preset, latent_frames: int, dtype: torch.dtype, decoder: str = "wan") -> Footprint:
    """Sizes of every part of a video of `latent_frames` latent frames at the preset's resolution in `dtype`."""
    from cfcli.models.kv_quant import QuantKVCache
    from cfcli.pipeline.samplers import sampler_kind

    configs = preset.configs
    dit, t5, vae = _meta_models(configs)
    cfg, tcfg, size = dit.cfg, t5.cfg, dtype.itemsize
    h, w = configs.geometry.latent_size(preset.height, preset.width)
    ft = dit.frame_tokens(h, w)
    kind = sampler_kind(preset)
    frames = kind.cache_frames(preset, latent_frames)
    kv = (cfg.num_layers + kind.scratch_layers) * 2 * frames * ft * cfg.dim * size
    kv_quant = QuantKVCache.nbytes(cfg.num_layers, 1, frames * ft, cfg.num_heads, cfg.head_dim, KV_FORMAT,
                                   dtype) if kind.quantizable_cache else kv
    read = frames * ft
    tokens = preset.block_frames * ft
    # One call's transient: per block the FFN's hidden layer and ~8 token-wide tensors (x, q, k, v, attention out,
    # norms, residual), twice over for what lives between blocks and the allocator's rounding: calibrated on an H200,
    # where it matches the default plan's measured DiT-only peak, CUDA graphs included (docs/performance.md).
    dit_work = 2 * tokens * (2 * cfg.ffn_dim + 8 * cfg.dim) * size
    dequant = 2 * read * cfg.dim * size + cfg.ffn_dim * cfg.dim * size
    text_kv = cfg.num_layers * 2 * cfg.text_len * cfg.dim * size
    dec_bytes = module_bytes(vae, dtype)  # the whole VAE: its encoder makes I2V and extend context
    if decoder == "taehv":
        from cfcli.models.taehv import TAEHV, TAEHVConfig

        with torch.device("meta"):
            dec_bytes += module_bytes(TAEHV(TAEHVConfig()), dtype)
    decode, _ = decoder_peak(decoder, configs, h, w, dtype)
    decode_split, decode_host = decoder_peak(decoder, configs, h, w, dtype, split=True)
    text_proj = sum(module_bytes(b.cross_attn.k, dtype) + module_bytes(b.cross_attn.v, dtype) for b in dit.blocks)
    # umT5 over a full-length prompt: the residual stream, q/k/v/o, the gated FFN's three hidden tensors, the
    # position bias and the attention scores.
    L = cfg.text_len
    t5_work = L * (6 * tcfg.dim + 3 * tcfg.dim_ffn) * size + 2 * tcfg.num_heads * L * L * size
    t5_block = module_bytes(t5.blocks[0], dtype)
    return Footprint(
        dit=module_bytes(dit, dtype), dit_int8=module_bytes(dit, dtype, int8=True),
        block=module_bytes(dit.blocks[0], dtype), block_int8=_block_int8(dit, dtype), blocks=cfg.num_layers, kv=kv,
        kv_quant=kv_quant, dit_work=dit_work,
        dequant_work=dequant, text_kv=text_kv, text_proj=text_proj, decoder=dec_bytes, decode_work=decode,
        decode_work_split=decode_split, decode_work_host=decode_host,
        text_resident=module_bytes(t5, dtype) + t5_work,
        text_stream=2 * t5_block + module_bytes(t5.norm, dtype) + t5_work, kv_quantizable=kind.quantizable_cache)


def _block_int8(dit: nn.Module, dtype: torch.dtype) -> int:
    wrapper = nn.Module()
    wrapper.blocks = nn.ModuleList([dit.blocks[0]])
    return module_bytes(wrapper, dtype, int8=True)


# ---------------------------------------------------------------------------------------------------------------
# Choosing

def candidates(fp: Footprint, quantised_only: bool) -> list[MemoryPlan]:
    """Every plan, largest first."""
    exact = [MemoryPlan("exact", "model", "model", "resident", True, True),
             MemoryPlan("exact", "model", "model", "stream", True, True, lean=True),
             MemoryPlan("exact", "model", "model", "stream", False, True, lean=True),
             MemoryPlan("exact", "model", "model", "stream", False, False, lean=True),
             MemoryPlan("exact", "model", "model", "stream", False, True, lean=True, host_decoder_cache=True)]
    kv = KV_FORMAT if fp.kv_quantizable else "model"
    low = [MemoryPlan("low" if k == 0 else "low+offload", "int8", kv, "stream", False, True, k, lean=True)
           for k in range(fp.blocks + 1)]
    low.append(replace(low[-1], name="min", host_decoder_cache=True))
    return low if quantised_only else exact + low


def choose_plan(fp: Footprint, budget: int, quantised_only: bool = False, what: str = "this video") -> MemoryPlan:
    """The first plan whose estimated peak fits `budget` bytes (less `HEADROOM`); a CfError when none does."""
    usable = budget * (1 - HEADROOM)
    plans = candidates(fp, quantised_only)
    for plan in plans:
        need = fp.need(plan)
        if need <= usable:
            return replace(plan, need=need, budget=budget)
    least = math.ceil(min(fp.need(p) for p in plans) / (1 - HEADROOM) / GIB * 10) / 10  # rounded up, and
    have = math.floor(budget / GIB * 10) / 10  # down: never "needs 5.0, 5.0 available"
    raise CfError(f"{what} needs at least {least:.1f} GiB of GPU memory; {have:.1f} GiB is available",
                  "free GPU memory (close other programs), or make fewer frames / a smaller --height/--width")


@dataclass(frozen=True)
class GpuMemory:
    total: int
    free: int


def gpu_memory(device: torch.device) -> GpuMemory | None:
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return GpuMemory(total, free)


def budget_for(gpu: GpuMemory, max_vram: float | None, low_vram: bool) -> int:
    """Bytes to plan for: `--max-vram` (at most the GPU's free memory), `--low-vram`'s 7 GiB, or what is free."""
    if max_vram is not None:
        if max_vram <= 0:
            raise CfError(f"--max-vram must be positive, got {max_vram:g}")
        return min(int(max_vram * GIB), gpu.free)
    return min(int(LOW_VRAM_GIB * GIB), gpu.free) if low_vram else gpu.free


def plan_memory(preset: Preset, latent_frames: int, dtype: torch.dtype, gpu: GpuMemory | None,
                max_vram: float | None = None, low_vram: bool = False, decoder: str = "wan") -> MemoryPlan | None:
    """The plan of a run (before any model loads). Off the GPU: None, or with `--low-vram` the `low` numerics (so
    they can be tried on the CPU); `--max-vram` there is an error."""
    if gpu is None:
        if max_vram is not None:
            raise CfError("--max-vram needs a CUDA GPU", "leave it out on the CPU")
        return candidates(footprint(preset, latent_frames, dtype, decoder), True)[0] if low_vram else None
    fp = footprint(preset, latent_frames, dtype, decoder)
    what = f"{preset.name} at {preset.width}×{preset.height}"
    return choose_plan(fp, budget_for(gpu, max_vram, low_vram), low_vram, what)


def available_ram() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_host_memory(preset: Preset, latent_frames: int, dtype: torch.dtype, decoder: str = "wan") -> None:
    """A CPU run, before any weights are built or loaded in host memory: refused when the larger of its text phase
    (the whole umT5) and its generation (DiT, VAE, KV cache, one call's work) is more than the memory available."""
    fp = footprint(preset, latent_frames, dtype, decoder)
    need = max(fp.text_resident, fp.dit + fp.decoder + fp.kv + fp.text_kv + fp.dit_work + fp.decode_work)
    free = available_ram()
    if free is not None and need > free:
        raise CfError(f"a CPU run of {preset.name} at {preset.width}×{preset.height} in "
                      f"{str(dtype).removeprefix('torch.')} needs about {need / GIB:.1f} GiB of memory; "
                      f"{free / GIB:.1f} GiB is available",
                      "free memory, or make fewer frames at a smaller size: full-size weights at --dtype bfloat16 "
                      "--height 240 --width 416 --frames 5 need about 11 GiB")


def cap_allocator(device: torch.device, max_vram: float | None) -> None:
    """Hold the process to `--max-vram`: PyTorch's allocator refuses to go past it, so a run on a big GPU proves the
    plan fits a small one."""
    if max_vram is None or device.type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(min(1.0, max_vram * GIB / total), index)



def plan_run(preset: Preset, latent_frames: int, device: torch.device, dtype: torch.dtype, decoder: str,
             max_vram: float | None, low_vram: bool) -> MemoryPlan | None:
    """The plan of a command's run, or None off the GPU without `--low-vram`; caps the allocator for `--max-vram`.
    Called before any model loads, so a run that cannot fit stops with the planner's message."""
    plan = plan_memory(preset, latent_frames, dtype, gpu_memory(device), max_vram, low_vram, decoder)
    if plan is not None:
        cap_allocator(device, max_vram)
    return plan


def with_kept_text(plan: MemoryPlan | None, preset: Preset, latent_frames: int, dtype: torch.dtype, decoder: str,
                   choice: str | None = None) -> MemoryPlan | None:
    """`plan` for a run that keeps umT5 loaded beside the DiT (`cf live`): whole on the GPU ("resident") when it fits
    the budget with the generation's peak; else in host memory, streamed to the GPU block by block for each new
    prompt ("stream": two blocks and the activations on the GPU); else on the CPU ("cpu", which answers a
    full-size prompt in minutes, not seconds: docs/live.md). `choice` ("cuda" / "stream" / "cpu") decides instead,
    and a GPU placement that cannot fit is refused. Off the GPU (no plan) umT5 runs where the run does."""
    if plan is None:
        return None
    fp = footprint(preset, latent_frames, dtype, decoder)
    beside = {"resident": fp.text_resident, "stream": fp.text_stream, "cpu": 0}
    order = {None: ("resident", "stream", "cpu"), "cuda": ("resident",), "stream": ("stream",), "cpu": ("cpu",)}
    usable = (plan.budget or 0) * (1 - HEADROOM)
    text = next((t for t in order[choice] if t == "cpu" or fp.generation(plan) + beside[t] <= usable), None)
    if text is None:
        need = math.ceil((fp.generation(plan) + beside[order[choice][0]]) / (1 - HEADROOM) / GIB * 10) / 10
        where = "beside the DiT" if choice == "cuda" else "streamed beside the DiT"
        raise CfError(f"umT5 {where} needs about {need:.1f} GiB of GPU memory; "
                      f"{(plan.budget or 0) / GIB:.1f} GiB is planned for",
                      "use --text-device stream" if choice == "cuda" else "use --text-device cpu")
    return replace(plan, text=text, text_kept=True, need=max(fp.generation(plan) + beside[text], fp.load(plan)))
