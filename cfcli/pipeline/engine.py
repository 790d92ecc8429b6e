"""The engine: a preset's models on one device, and the streaming generation loop over them.

`Engine.load(preset, device, dtype)` builds the DiT and VAE (weights assigned straight into the target dtype and
device); the text encoder is loaded only when a prompt needs encoding and is dropped right after.
`Engine.generate(...)` yields a `Chunk` per block as soon as it is denoised and decoded, so callers can write video
while the next block is generated.
"""

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from cfcli import hub
from cfcli.errors import CfError
from cfcli.models.checkpoint import generator_state_dict, load_strict, read_state_dict
from cfcli.models.build import build_models
from cfcli.models.cache import DiTCache
from cfcli.models.dit import CausalWanDiT
from cfcli.models.vae import WanVAE
from cfcli.pipeline import compile_cache
from cfcli.pipeline.phases import loading
from cfcli.pipeline.prompts import TextSchedule
from cfcli.pipeline.sampler import StepPlan, StepSync
from cfcli.pipeline.samplers import sampler_kind
from cfcli.pipeline.schedule import FlowSchedule
from cfcli.pipeline.video import to_uint8
from cfcli.presets import Preset

if TYPE_CHECKING:
    from cfcli.pipeline.memory import MemoryPlan

DECODERS = ("wan", "taehv")


def check_decoder(name: str, need_weights: bool = False) -> None:
    """Raise a CfError for an unknown decoder or (with `need_weights`) TAEHV weights that are not downloaded."""
    if name not in DECODERS:
        raise CfError(f"unknown decoder {name!r}", f"use one of: {', '.join(DECODERS)}")
    if name == "taehv" and need_weights:
        from cfcli.taehv_weights import cached_taehv

        cached_taehv()


def check_quantization(scheme: str | None, device: torch.device) -> None:
    """Raise a CfError unless `Engine.quantize(scheme)` can run on `device` (checked before any model loads)."""
    if scheme is None:
        return
    if scheme != "fp8":
        raise CfError(f"unknown quantization {scheme!r}", "use --quantize fp8, or leave it out")
    from cfcli.ops.fp8 import fp8_supported

    ok, why = fp8_supported(device)
    if not ok:
        raise CfError(why, "leave out --quantize to run in the preset's precision")


SWAPPABLE = {"Int8Linear", "FP8Linear"}  # quantised layers a LoRA swap requantises in place (`assign_`)

# Every speed lever, in the order `Engine.levers` lists those that run (the first seven are EngineOptions fields).
LEVERS = ("compile", "graphs", "cudnn_attention", "split_attention", "fused_gelu", "tuned_vae", "fused_vae", "fp8",
          "taehv")


@dataclass(frozen=True)
class EngineOptions:
    """How an engine runs beyond what its preset says: the speed levers, quantisation, the decoder (the memory plan is
    an argument of its own: `Engine.configure`).

    Each lever is applied only where it runs (all are CUDA ones; `Engine.levers` lists those that did). None changes
    what is computed; all but the graphs move results within rounding. `EngineOptions.plain()`: every lever off, the
    reference modules as written (`--plain`)."""

    compile: bool = True  # the DiT blocks' cache-free stages compiled (`cfcli.pipeline.fast.compile_blocks`)
    graphs: bool = True  # each DiT call replayed as a CUDA graph (`cfcli.pipeline.fast.GraphedDiT`)
    quantize: str | None = None  # `Engine.quantize`: "fp8"
    decoder: str = "wan"  # `Engine.use_decoder`: "wan" or "taehv"
    cudnn_attention: bool = True  # SDPA's cuDNN kernel first (`cfcli.ops.attention.preferred_backends`)
    split_attention: bool = True  # self-attention split across the keys (`cfcli.ops.split_attention`; Hopper+)
    fused_gelu: bool = True  # each FFN's up-projection and GELU as one GEMM (`cfcli.ops.linear`)
    tuned_vae: bool = True  # the decoder's fast forms (`cfcli.models.vae_fast`): channels-last, sub-pixel, stacked taps
    fused_vae: bool = True  # with `tuned_vae`: its norm + SiLU and bias + residual as Triton kernels
    loras: tuple = ()  # `cfcli.pipeline.loras.Adapter`s merged into the DiT's weights first (`Engine.merge`)

    @classmethod
    def plain(cls, **on) -> "EngineOptions":
        """Every speed lever off (the DiT and VAE as the reference modules, the Wan VAE decoding), but those in `on`
        (e.g. `graphs=True`)."""
        off = cls(compile=False, graphs=False, cudnn_attention=False, split_attention=False, fused_gelu=False,
                  tuned_vae=False, fused_vae=False)
        return replace(off, **on)

    def check(self, device: torch.device, need_weights: bool = True) -> None:
        """Raise a CfError for what cannot run on `device` (before any model loads); `need_weights`: the TAEHV
        weights must be downloaded too."""
        check_quantization(self.quantize, device)
        check_decoder(self.decoder, need_weights)


@dataclass
class Chunk:
    """A finished block, or one latent frame of it: latents [F, C, h, w] (on the device), pixels [n, 3, H, W] uint8.

    When decoding, a block of several latent frames is handed out one latent frame at a time, each as soon as its
    pixels are decoded: the first frames of a chunk-wise block appear after one latent frame's decode, not three.

    On CUDA the pixels are decoded and copied to pinned host memory on a side stream while the DiT goes on with the
    next block; `ready` is the event that marks them done and `host_pixels()` waits for it (never for the DiT).
    `context` marks latents that were given (I2V picture, clip to extend) rather than generated.
    """

    latents: Tensor
    pixels: Tensor | None
    context: bool = False
    ready: "torch.cuda.Event | None" = None
    block_end: bool = True  # the last chunk of its block (a decoded block comes out one latent frame at a time)

    def host_pixels(self) -> Tensor:
        if self.ready is not None:
            self.ready.synchronize()
        return self.pixels.cpu()


class Engine:
    def __init__(self, preset: Preset, dit: CausalWanDiT, vae: WanVAE, device: torch.device, dtype: torch.dtype):
        self.preset, self.dit, self.vae = preset, dit, vae
        self.geometry = preset.geometry
        self.device, self.dtype = device, dtype
        self.schedule = FlowSchedule(preset.timestep_shift)
        self.plan = StepPlan(tuple(self.schedule.warp(list(preset.steps))),
                             tuple(self.schedule.warp(list(preset.first_block_steps)))
                             if preset.first_block_steps else None)
        self.decoder = vae  # what turns latents into pixels: the Wan VAE, or TAEHV (`use_decoder`)
        self.runner = dit  # what the samplers call: the DiT, or its CUDA-graph wrapper (`accelerate`)
        self._cache: tuple[tuple, DiTCache] | None = None
        self.kv_format: str | None = None  # 8-bit KV cache ("int8" / "fp8"), set by a memory plan
        self.parked = None  # `cfcli.models.offload.Parked` text projections, set by a memory plan
        self.applied: set[str] = set()  # the levers `quantize` and `accelerate` turned on (`levers`)
        self.artefacts: "compile_cache.Artefacts | None" = None  # compiled code to keep after the first video
        self.loras: tuple = ()  # the LoRAs merged into the DiT (`merge`)
        self._loaded: dict[str, Tensor] | None = None  # weights a LoRA changed, as loaded (`merge(keep=True)`)
        self._swapping = threading.Lock()  # `keep_for` copies a weight while no `remerge` writes it
        self.linears_kept = False  # every block linear's weight kept as loaded before quantising (`keep_block_linears`)
        self.rewritten: list[str] = []  # the parameters the last `remerge` rewrote

    def levers(self) -> list[str]:
        """The speed levers this engine runs with, in `LEVERS` order: what `cf bench` reports."""
        on = self.applied | ({"taehv"} if self.decoder is not self.vae else set())
        return [name for name in LEVERS if name in on]

    def use_decoder(self, name: str, model: nn.Module | None = None) -> "Engine":
        """Decode with the Wan VAE (`wan`) or the TAEHV tiny decoder (`taehv`: its cached weights unless `model` is
        given; float16 on GPUs as upstream runs it). Encoding (I2V, clips to extend) always uses the Wan VAE."""
        check_decoder(name)
        if name == "wan":
            self.decoder = self.vae
            return self
        from cfcli.models.taehv import TAEHVConfig, load_taehv
        from cfcli.taehv_weights import cached_taehv

        t, g = TAEHVConfig(), self.geometry
        if (t.temporal_stride, t.spatial_stride, t.latent_channels) != (g.time_stride, g.space_stride,
                                                                        g.latent_channels):
            raise CfError(f"the TAEHV decoder is made for the Wan2.1 VAE's latents, not {self.preset.name}'s",
                          "leave out --decoder taehv")

        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.decoder = model.to(self.device, dtype) if model is not None else load_taehv(cached_taehv(), self.device,
                                                                                         dtype)
        return self

    def quantize(self, scheme: str | None) -> "Engine":
        """Opt-in lower precision: `fp8` stores the DiT blocks' linear layers in float8 and runs them as FP8 matmuls
        with per-tensor scales (`cfcli.ops.fp8`; Ada/Hopper GPUs). Call before `accelerate`."""
        if scheme is None:
            return self
        check_quantization(scheme, self.device)
        from cfcli.models.dit import hot_linear
        from cfcli.ops.fp8 import quantize_fp8_

        if quantize_fp8_(self.dit, hot_linear):
            self.applied.add("fp8")
        return self

    def merge(self, adapters: tuple, keep: bool = False) -> "Engine":
        """Merge LoRAs (`cfcli.pipeline.loras.Adapter`s) into the DiT's weights: in float32, cast back, before the
        weights are quantised, offloaded, compiled or captured, so they cost nothing per frame. `keep`: hold the
        changed weights as loaded in host memory, so `remerge` can swap the LoRAs in place later."""
        from cfcli.lora.merge import merge_
        from cfcli.pipeline.loras import pairs

        kept = merge_(self.dit, pairs(adapters), keep) if adapters else {}
        self.loras, self._loaded = tuple(adapters), kept if keep else None
        return self

    def remerge(self, adapters: tuple) -> "Engine":
        """Swap the merged LoRAs for `adapters` in place (compiled code and CUDA graphs stay valid): each changed
        weight from its loaded value plus the new deltas (`can_remerge`; a CfError otherwise)."""
        from cfcli.lora.merge import remerge_
        from cfcli.pipeline.loras import pairs

        if (why := self.remerge_refusal) is not None:
            raise CfError(f"the LoRAs of this engine cannot be swapped in place: {why}",
                          "load the models again with the new LoRAs")
        with self._swapping:
            self._loaded = {} if self._loaded is None else self._loaded  # none merged yet: the weights are as loaded
            try:
                self.rewritten = remerge_(self.dit, self._loaded, pairs(adapters), pairs(self.loras))
            except BaseException:
                self.loras = (*self.loras, *adapters)  # partly written: the next swap rewrites what either set changes
                raise
            self.loras = tuple(adapters)
        return self

    def keep_for(self, adapters: tuple) -> None:
        """Copy to the host, ahead of `remerge(adapters)` and on the caller's thread, the weights as loaded that the
        swap starts from and that are not kept yet, so the swap itself (which holds up a block) only computes and
        writes. Does nothing where `remerge` would refuse."""
        from cfcli.lora.merge import changed, keep_
        from cfcli.pipeline.loras import pairs

        with self._swapping:
            if self.remerge_refusal is not None:
                return
            self._loaded = {} if self._loaded is None else self._loaded
        keep_(self.dit, self._loaded, changed(pairs(adapters)), self._swapping)

    def keep_block_linears(self) -> None:
        """Keep every block linear's weight as loaded in host memory (those a LoRA changed are kept already), before
        an int8 plan or FP8 quantises them: what a later swap starts from."""
        from cfcli.lora.merge import keep_
        from cfcli.models.dit import block_linear

        self._loaded = {} if self._loaded is None else self._loaded
        linears = [f"{name}.weight" for name, m in self.dit.named_modules() if block_linear(name, m)]
        keep_(self.dit, self._loaded, linears)
        self.linears_kept = True

    @property
    def can_remerge(self) -> bool:
        """Whether `remerge` can run: the weights plain, and those a LoRA changed kept as loaded (or none merged)."""
        return self.remerge_refusal is None

    @property
    def remerge_refusal(self) -> str | None:
        """Why `remerge` cannot swap the LoRAs in place (a phrase for messages), or None when it can: quantised block
        weights (int8, FP8) can, when their weights as loaded were kept before quantising (`keep_block_linears`)."""
        if hasattr(self.dit.blocks, "distinct") or self._quantised() - (SWAPPABLE if self.linears_kept else set()):
            return self.not_plain
        if self._loaded is None and self.loras:
            return "its LoRAs were merged without keeping the weights as loaded, which a swap starts from"
        return None

    @property
    def plain_weights(self) -> bool:
        """Whether the DiT's weights are still the modules' own: no blocks offloaded, no Linear quantised."""
        return self.not_plain is None

    @property
    def not_plain(self) -> str | None:
        """What keeps the DiT's weights from being the modules' own (offloaded blocks, quantised Linears), or None."""
        if hasattr(self.dit.blocks, "distinct"):  # offloaded (`cfcli.models.offload`)
            return "its blocks are offloaded to host memory (a memory plan)"
        if kinds := self._quantised():
            return (f"its block weights are quantised ({', '.join(sorted(kinds))}: --quantize fp8 or an int8 memory "
                    "plan), so the weights as loaded are gone")
        return None

    def _quantised(self) -> set[str]:
        """The kinds of quantised layer among the DiT's block linears (`Int8Linear`, FP8's)."""
        from cfcli.models.dit import BLOCK_LINEARS

        return {type(m).__name__ for name, m in self.dit.named_modules() if BLOCK_LINEARS.fullmatch(name)} - {"Linear"}

    def configure(self, options: EngineOptions, plan: "MemoryPlan | None" = None,
                  decoder_model: nn.Module | None = None, keep_loaded: bool = False) -> "Engine":
        """LoRAs merged (`keep_loaded`: see `merge`), decoder (`decoder_model`: TAEHV weights to use instead of the
        cached ones, see `use_decoder`), quantisation, the memory `plan`, then the fast path the plan allows (the
        order they must come in)."""
        swappable = keep_loaded and (plan is None or not plan.offload_blocks)
        self.merge(options.loras, swappable)  # kept only where a swap in place can use them
        if swappable and (options.quantize or (plan is not None and plan.weights == "int8")):
            self.keep_block_linears()  # a swap requantises from the weights as loaded: quantising leaves none
        self.use_decoder(options.decoder, decoder_model).quantize(options.quantize)
        if plan is not None:
            self.apply(plan)
            options = plan.limit(options)
        return self.accelerate(options)

    def apply(self, plan: "MemoryPlan") -> "Engine":
        """Put the parts where a memory plan (`cfcli.pipeline.memory`) says, through what the models offer: int8 block
        weights, parked text projections, an 8-bit KV cache, offloaded blocks, the decoder's lean forms."""
        from cfcli.models.dit import block_linear
        from cfcli.models.offload import Parked
        from cfcli.ops.weight_quant import quantize_int8_

        if plan.weights == "int8":
            quantize_int8_(self.dit, block_linear)
        elif plan.lean:
            self.parked = Parked(self.dit.text_projections(), self.device)
        if plan.kv != "model":
            self.kv_format = plan.kv
        if plan.offload_blocks:
            self.dit.offload_blocks(plan.offload_blocks)
        if plan.lean:
            self.vae.lean(True, plan.host_decoder_cache)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return self

    def accelerate(self, options: EngineOptions = EngineOptions()) -> "Engine":
        """Turn on the CUDA speed levers `options` asks for (`cfcli.pipeline.fast`), where they run; `levers()` then
        lists them. Off the GPU there is nothing to do: every model stays the reference.

        Graphs are bit-exact with the eager path; the other levers move results within bf16 rounding. Compiling costs
        a one-off compilation, kept in `$CF_HOME/compiled` after the first video (`cfcli.pipeline.compile_cache`) and
        loaded here by the next process.
        """
        if self.device.type != "cuda":
            return self
        from cfcli.pipeline import fast

        self.applied.update(fast.use_dit_kernels(self.dit, options.split_attention, options.fused_gelu,
                                                    options.cudnn_attention))
        if options.compile:
            self.artefacts = compile_cache.load(compile_cache.key(self))  # before anything compiles
            fast.compile_blocks(self.dit)
            self.applied.add("compile")
        if options.graphs:
            self.runner = fast.GraphedDiT(self.dit)
            self.applied.add("graphs")
        if options.tuned_vae:
            self.applied.update(fast.tune_vae(self.vae, options.fused_vae))
        return self

    @classmethod
    def load(cls, preset: Preset, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             note: Callable[[str], None] = lambda m: None, phases=None) -> "Engine":
        """The preset's DiT and VAE on `device`; `note` hears a status line before each loads, `phases` (a
        `cfcli.pipeline.phases.Phases`) times each load."""
        from cfcli.pipeline.phases import maybe_load

        device = torch.device(device)
        gen_path, vae_path = hub.resolve(preset, "generator"), hub.resolve(preset, "vae")
        note(loading("DiT", gen_path))
        models = build_models(preset)
        dit, vae = models.dit, models.vae
        with maybe_load(phases, "dit", gen_path):
            sd = generator_state_dict(read_state_dict(gen_path), preset.use_ema)
            load_strict(dit, sd, what=f"generator ({gen_path.name})", dtype=dtype, device=device)
        note(loading("VAE", vae_path))
        with maybe_load(phases, "vae", vae_path):
            load_strict(vae, read_state_dict(vae_path), what=f"VAE ({vae_path.name})", dtype=dtype, device=device)
        return cls(preset, dit, vae, device, dtype)

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.geometry.latent_size(self.preset.height, self.preset.width)

    def new_cache(self, total_frames: int) -> DiTCache:
        """An empty KV cache for a video of `total_frames` latent frames: global up to the horizon, rolling beyond it.

        The long-video (`sampler: rolling`) cache is one anchor block plus the attention window, whatever the length.
        The buffer of the previous video is reused (reset) when its layout fits, so that it is allocated once and the
        CUDA graphs recorded against it stay valid.
        """
        p, g = self.preset, self.geometry
        if total_frames > g.max_latent_frames:
            raise CfError(f"{g.video_frames_for(total_frames)} video frames is too long for the model's position "
                          f"table", f"the maximum is {g.max_video_frames} frames")
        kind = sampler_kind(p)
        layout = kind.layout(p, total_frames, self.kv_format)
        if self._cache is not None and self._cache[0] == layout:
            self._cache[1].reset()
            return self._cache[1]
        self._cache = None  # free the old buffer before allocating the new one
        self._cache = (layout, kind.make_cache(self, layout))
        return self._cache[1]

    @torch.inference_mode()
    def text_kv(self, context: Tensor) -> Tensor:
        """Cross-attention K/V for umT5 features [1, L, text_dim] (computed once per prompt)."""
        if self.parked is not None:
            with self.parked.on_device():
                return self.dit.text_kv(context.to(self.device, self.dtype))
        return self.dit.text_kv(context.to(self.device, self.dtype))

    def encode_video(self, video: Tensor) -> Tensor:
        """Pixels [3, T, H, W] in [-1, 1] (T = 1 + s·k, s the VAE's time stride) -> normalised latents
        [1, 1 + k, C, h, w]."""
        return self.vae.encode(video.to(self.device, self.dtype)[None])

    def generate(self, text_kv: Tensor | TextSchedule, latent_frames: int, seed: int, context: Tensor | None = None,
                 decode: bool = True, run_frames: int | None = None, step_sync: bool = False,
                 idle: Callable[[], bool] | None = None) -> Iterator[Chunk]:
        """Generate `latent_frames` new latent frames after the given `context` latents [1, F_in, C, h, w].

        `text_kv` is one prompt's cross-attention K/V or, for prompt switching, a `TextSchedule` by latent frame (and
        denoising step).

        `step_sync` (`cf live`): hold the loop at most two DiT calls ahead of the GPU (`StepSync`), so a prompt queued
        while a block is made lands at that block's next step; the latents are the same. Nothing to do off the GPU.

        `idle` (`cf live`, block-causal sampler only): called once per block of two or more steps, after its first
        step is queued (`CausalSampler`): where live playback pacing waits, so that a cut arriving in the wait lands
        at the block's next step; True runs the block again from its noise, as if it started then.

        The seed is applied right before the noise is drawn (after any context was encoded by the caller), on a
        generator of the run's device: the same seed gives the official noise stream.

        `run_frames` (new latent frames, at least `latent_frames`): run as a run of that length does (its noise drawn
        whole, its KV cache, its sampler) and stop after the first `latent_frames`, which are then bit for bit that
        run's: how a live recording, cut from a longer run, is made again.

        Once the engine's first video has run to its end, the code compiled for it is saved for the next process.
        """
        n_ctx = 0 if context is None else context.shape[1]
        total = latent_frames if run_frames is None else run_frames
        bf = self.preset.block_frames
        if latent_frames <= 0 or latent_frames % bf or total < latent_frames or total % bf:
            raise CfError(f"{latent_frames} latent frames (of a run of {total}) is not a whole number of {bf}-frame "
                          "blocks")
        kind = sampler_kind(self.preset)
        if context is not None and not kind.starts_from_frames:
            raise CfError(f"the {kind.label} sampler cannot start from given frames",
                          "generate from text only, or start from a picture or clip with a framewise/chunkwise preset")
        sync = StepSync() if step_sync and self.device.type == "cuda" else None
        if idle is not None and not kind.steps_between:
            raise CfError(f"the {kind.label} sampler has no step to wait at", "pace between blocks")
        sampler = kind.sampler(self.runner, self.schedule, self.plan, bf, self.new_cache(n_ctx + total), sync,
                               **({"idle": idle} if idle is not None else {}))
        decoder = self.decoder.stream_decoder() if decode else None
        side = torch.cuda.Stream(self.device) if decode and self.device.type == "cuda" else None

        def chunk(latents: Tensor, is_context: bool, block_end: bool = True) -> Chunk:
            if decoder is None:
                return Chunk(latents[0], None, is_context)
            if side is None:
                return Chunk(latents[0], to_uint8(decoder.decode(latents)[0]), is_context, None, block_end)
            return decode_aside(decoder, latents, side, is_context, block_end)

        with torch.inference_mode():
            if context is not None:
                context = context.to(self.device, self.dtype)
                sampler.prime(context, text_kv)
                yield chunk(context, True)
            generator = torch.Generator(self.device).manual_seed(seed)
            h, w = self.latent_hw
            noise = torch.randn((1, total, self.dit.cfg.in_dim, h, w), generator=generator,
                                dtype=self.dtype, device=self.device)
            left = latent_frames  # a longer run (`run_frames`) stops once these are out
            for x0 in sampler.stream(noise, text_kv, generator):
                x0 = x0[:, :left]
                left -= x0.shape[1]
                if decoder is None:
                    chunks = [chunk(x0, False)]
                else:
                    chunks = [chunk(x0[:, i:i + 1], False, block_end=i + 1 == x0.shape[1]) for i in range(x0.shape[1])]
                if left > 0:
                    if sync is not None and chunks[0].ready is not None:
                        # live: the block's first frames are decoded before its clean pass runs beside them
                        torch.cuda.current_stream(self.device).wait_event(chunks[0].ready)
                    sampler.commit_now()  # queued behind the decodes, before the host waits on their pixels
                yield from chunks
                if left <= 0:
                    break
        if self.artefacts is not None:  # the first video compiled what the later ones run: kept for the next process
            compile_cache.save(self.artefacts)
            self.artefacts = None


def decode_aside(decoder, latents: Tensor, side: "torch.cuda.Stream", is_context: bool, block_end: bool) -> Chunk:
    """Decode `latents` on the `side` stream, overlapping the DiT's next block, into pinned host memory."""
    side.wait_stream(torch.cuda.current_stream(latents.device))  # the block's x0 must be finished
    latents.record_stream(side)  # the allocator must not hand its memory to the DiT before the decode has read it
    with torch.cuda.stream(side):
        pixels = to_uint8(decoder.decode(latents)[0])
        host = torch.empty(pixels.shape, dtype=pixels.dtype, pin_memory=True)
        host.copy_(pixels, non_blocking=True)
        ready = torch.cuda.Event(enable_timing=True)  # `cf bench` times blocks by it
        ready.record(side)
    return Chunk(latents[0], host, is_context, ready, block_end)
