"""`cf bench`: time the production generation loop and set every number against its FLOP floor.

The benchmark runs the exact loop `cf generate` runs (`Engine.generate`, which streams decoded `Chunk`s), on the
cached weights or on random weights of the preset's architecture (built on the meta device, materialised on the
target device and initialised in place, so no CPU copy of 1.3B/5.7B parameters is ever made). Order and memory
follow production: umT5 encodes first and is released before the DiT and VAE are built, so the peak GPU memory of
the generation phase is the one `cf generate` needs.

Timing: CUDA events recorded on the stream when each chunk is handed out (its pixels decoded), one synchronisation at
the end of each repeat, so the host never waits inside the loop beyond what the engine itself does; `perf_counter`
on the CPU. Generation FPS (DiT only) comes from a separate run with `decode=False`.

FLOP floors (docs/performance.md): the DiT is counted analytically per call over the sampler's actual call sequence
(spec §7.1–7.2), the VAE decoder by running it on the meta device under `FlopCounterMode` at the output resolution,
umT5 analytically. Floor time = FLOPs / an assumed matmul rate (`peak_tflops`).
"""

import contextlib
import gc
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from cfcli.errors import CfError
from cfcli.models.dit import DiTConfig
from cfcli.models.t5 import encode_text
from cfcli.pipeline.engine import Engine, EngineOptions
from cfcli.pipeline.flops import FlopPlan, flop_plan, t5_flops
from cfcli.pipeline.memory import MemoryPlan
from cfcli.pipeline.random_weights import random_ids, random_t5
from cfcli.presets import Preset

DEFAULT_PEAK_TFLOPS = 700.0  # dense bf16 matmul rate assumed for an H100 (the 8192³ GEMM reaches ~800 there)
BENCH_PROMPT = ("a red fox running through a snowy birch forest at dawn, soft golden light between the trees, "
                "snow dust rising behind its paws, the camera tracking alongside at ground level, cinematic, "
                "shallow depth of field, highly detailed fur")


# ---------------------------------------------------------------------------------------------------------------
# Request and result

@dataclass
class BenchRequest:
    preset: Preset
    device: torch.device
    dtype: torch.dtype
    latent_frames: int
    repeat: int = 3
    random_weights: bool = False  # the engine's weights are random (text encoding then is too)
    seed: int = 0
    peak_tflops: float = DEFAULT_PEAK_TFLOPS
    options: EngineOptions = EngineOptions()
    plan: MemoryPlan | None = None  # the memory plan the engine runs (`cfcli.pipeline.memory`)
    save_latents: Path | None = None  # the latents of one more (untimed) DiT-only run, to compare plans


@dataclass
class BenchResult:
    """Medians over the timed repeats; `floor` holds the FLOP-bound value of each timed metric."""

    preset: str
    device: str
    gpu: str
    dtype: str
    torch: str
    frames: int
    latent_frames: int
    blocks: int
    block_frames: int
    steps: list[int]
    height: int
    width: int
    weights: str  # "cached" | "random"
    attention: list[str]
    repeat: int
    target_fps: int
    fps_end_to_end: float
    fps_generation: float
    first_frame_s: float
    block_ms_p50: float
    block_ms_p95: float
    text_encode_s: float
    text_load_s: float | None
    text_tokens: int
    peak_vram_gib: float | None
    text_peak_vram_gib: float | None
    realtime: bool
    realtime_factor: float
    decoder: str  # "wan" or "taehv"
    fast_path: str  # "compile+graphs", "compile", "graphs" or "eager", then "+fp8" when quantised
    levers: list[str]  # the speed levers the engine applied (`Engine.levers`: names from `engine.LEVERS`)
    warmup_s: float  # the warm-up generation, compilation and graph captures included
    finite: bool
    dit_tflop: float
    vae_decode_tflop: float
    text_encode_tflop: float
    peak_tflops: float
    floor: dict = field(default_factory=dict)
    plan: str | None = None  # the memory plan (`MemoryPlan.describe`), on GPUs
    phase_peak_gib: dict = field(default_factory=dict)  # text, generation (DiT only), decode (DiT + decoder)

    def to_json(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Clocks and statistics

class Clock:
    """Marks on the device's stream (CUDA events) or the host clock; read after `sync()`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1000.0 if self.cuda else end - start


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def gib(nbytes: int) -> float:
    return nbytes / 2**30


def peak_memory(device: torch.device) -> float | None:
    return gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def phase_peak(device: torch.device, fn: Callable):
    """(fn(), peak GiB allocated while it ran); the allocator's cache is left alone (timings stay warm)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    return out, peak_memory(device)


# ---------------------------------------------------------------------------------------------------------------
# Text encoding

@dataclass
class TextTiming:
    context: Tensor  # umT5 features [1, tokens, dim] for the DiT (zero-padded to text_len by the engine)
    encode_s: float
    load_s: float | None
    tokens: int
    peak_gib: float | None


def load_text_encoder(preset: Preset, device, dtype, random: bool, seed: int, placement: str = "resident"):
    """(encoder, ids, mask): random weights on random ids, or the cached umT5 and tokenizer on BENCH_PROMPT.

    The cached path loads exactly as `PromptEncoder` does but bypasses its on-disk prompt cache, so the encoder
    itself is what gets timed. `placement` "stream": layer by layer from host memory.
    """
    configs = preset.configs
    cfg, text_len = configs.text_encoder, configs.geometry.text_len
    stream = placement == "stream"
    if random:
        encoder = random_t5(cfg, device, dtype, seed + 2, stream)
        ids, mask = random_ids(cfg.vocab, text_len, seed)
        return encoder, ids.to(device), mask.to(device)
    from cfcli.pipeline.text import load_umt5

    encoder, tokenizer = load_umt5(preset, device, dtype, placement)
    ids, mask = tokenizer([BENCH_PROMPT], text_len)
    return encoder, ids.to(device), mask.to(device)


def bench_text(preset: Preset, device, dtype, random: bool, repeat: int, clock: Clock, seed: int,
               placement: str = "resident") -> TextTiming:
    """Median umT5 time over `repeat` runs after one warm-up; the encoder is released before returning."""
    reset_peak(device)
    clock.sync()
    t0 = time.perf_counter()
    encoder, ids, mask = load_text_encoder(preset, device, dtype, random, seed, placement)
    clock.sync()
    load_s = None if random else time.perf_counter() - t0
    if random:  # random weights are made on the GPU part by part; production loads a streamed umT5 to host memory
        reset_peak(device)
    text_len = ids.shape[1]
    times = []
    with torch.inference_mode():
        context = encode_text(encoder, ids, mask, text_len)  # warm-up
        for _ in range(repeat):
            clock.sync()
            start = clock.mark()
            context = encode_text(encoder, ids, mask, text_len)
            end = clock.mark()
            clock.sync()
            times.append(clock.seconds(start, end))
    tokens = int(mask.sum())
    peak = peak_memory(device)
    del encoder  # umT5 leaves the GPU before the DiT is built, as in production
    reset_peak(device)
    return TextTiming(context[:, :tokens].clone(), statistics.median(times), load_s, tokens, peak)


# ---------------------------------------------------------------------------------------------------------------
# Generation timing

def timed_generation(engine: Engine, context: Tensor, latent_frames: int, seed: int, decode: bool,
                     clock: Clock) -> tuple[float, list[float], Tensor]:
    """Seconds from the start (cross K/V included) to the first chunk and to each block's last chunk being handed
    out, and the last block's latents.

    With `decode` the chunk's pixels are decoded when it is handed out; without, only the DiT has run.
    """
    clock.sync()  # the start mark must not queue behind earlier work
    start = clock.mark()
    text_kv = engine.text_kv(context)
    marks, first, last = [], None, None
    for chunk in engine.generate(text_kv, latent_frames, seed, decode=decode):
        # With decoding on CUDA the pixels are ready when the side stream's event fires, not on the main stream.
        mark = chunk.ready if chunk.ready is not None else clock.mark()
        first = mark if first is None else first
        if chunk.block_end:
            marks.append(mark)
        last = chunk.latents  # pixels are dropped at once, as a writer would
    clock.sync()
    return clock.seconds(start, first), [clock.seconds(start, m) for m in marks], last


@dataclass
class Repeat:
    total_s: float
    gen_s: float
    first_s: float
    block_s: list[float]
    gen_peak: float | None = None
    decode_peak: float | None = None


def one_repeat(engine: Engine, context: Tensor, latent_frames: int, seed: int, clock: Clock) -> Repeat:
    (first, ready, _), decode_peak = phase_peak(
        engine.device, lambda: timed_generation(engine, context, latent_frames, seed, True, clock))
    (_, dit_only, _), gen_peak = phase_peak(
        engine.device, lambda: timed_generation(engine, context, latent_frames, seed, False, clock))
    blocks = [b - a for a, b in zip([0.0] + ready[:-1], ready)]
    return Repeat(ready[-1], dit_only[-1], first, blocks, gen_peak, decode_peak)


def save_run_latents(engine: Engine, context: Tensor, latent_frames: int, seed: int, path: Path) -> None:
    """Every latent frame of one DiT-only run (float32 safetensors), to set one plan against another."""
    from safetensors.torch import save_file

    text_kv = engine.text_kv(context)
    latents = torch.cat([c.latents.float().cpu() for c in engine.generate(text_kv, latent_frames, seed, decode=False)])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents.contiguous()}, str(path))


# ---------------------------------------------------------------------------------------------------------------
# The whole benchmark

def gpu_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cpu_name() -> str:
    """The CPU's model name (`/proc/cpuinfo` on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine() or "cpu"


def attention_backends(device: torch.device, dtype: torch.dtype, cfg: DiTConfig, preferred: bool = True) -> list[str]:
    """SDPA backends `cfcli.ops.attention` prefers that actually run at the DiT's head size (first = used); without
    the `cudnn_attention` lever (`preferred`) PyTorch chooses."""
    if not preferred or device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return ["pytorch-default"]
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from cfcli.ops.attention import backend_names

    q = torch.randn(1, cfg.num_heads, 64, cfg.head_dim, device=device, dtype=dtype)
    ok = []
    for name in backend_names():
        try:
            with sdpa_kernel([getattr(SDPBackend, name.upper())]):
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            ok.append(name)
        except Exception:  # noqa: BLE001 - a backend that cannot run here is simply not listed
            pass
    return ok


WARMUP_FRAMES = 24  # latent frames generated before timing (more than the 21-frame horizon: the cache rolls too)


def run(req: BenchRequest, load_engine: Callable[[], Engine], status: Callable[[str], None] = lambda m: None
        ) -> BenchResult:
    """Time the text encoder, then the engine `load_engine` gives (loaded and configured under `req.plan`, after
    umT5 is gone as in production): a warm-up, then `req.repeat` timed videos."""
    p, dev, dt, plan = req.preset, req.device, req.dtype, req.plan
    if req.repeat < 1:
        raise CfError(f"--repeat must be at least 1, got {req.repeat}")
    use_random = req.random_weights
    # An engine of an earlier run in this process is freed only by the cycle collector (each compiled block stage
    # refers back to its block); until then its weights would count in this run's peak memory.
    gc.collect()
    device_ctx = torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
    with device_ctx:
        clock = Clock(dev)
        status("text encoder")
        text = bench_text(p, dev, dt, use_random, req.repeat, clock, req.seed, plan.text if plan else "resident")
        status("building the DiT and VAE")
        engine = load_engine()
        reset_peak(dev)
        compiling = "compile" in engine.levers()
        status("warm-up" + (" (compiling)" if compiling else ""))
        # Kernels are chosen, blocks compiled and graphs captured within a few blocks; once past the horizon every
        # cache plan repeats, so a long video need not be made twice.
        warm = min(req.latent_frames, WARMUP_FRAMES // p.block_frames * p.block_frames)
        started = time.perf_counter()
        _, _, last = timed_generation(engine, text.context, warm, req.seed, True, clock)
        warmup_s = time.perf_counter() - started
        finite = bool(torch.isfinite(last.float()).all())
        repeats = []
        for r in range(req.repeat):
            status(f"repeat {r + 1}/{req.repeat}")
            repeats.append(one_repeat(engine, text.context, req.latent_frames, req.seed, clock))
        peak = peak_memory(dev)
        if peak is not None:  # the phases reset the peak: the run's is the largest of theirs
            peak = max(peak, *(r.decode_peak for r in repeats), *(r.gen_peak for r in repeats))
        if req.save_latents is not None:
            save_run_latents(engine, text.context, req.latent_frames, req.seed, req.save_latents)
        levers = engine.levers()
        attention = attention_backends(dev, dt, engine.dit.cfg, "cudnn_attention" in levers)
    flops = flop_plan(p, req.latent_frames, req.options.decoder)
    result = summarise(req, repeats, text, flops, use_random, finite, peak, attention, gpu_name(dev), warmup_s,
                       levers)
    result.plan = plan.describe() if plan is not None else None
    if dev.type == "cuda":
        worst = lambda phase: max(getattr(r, phase) for r in repeats)  # noqa: E731
        result.phase_peak_gib = {"text": text.peak_gib, "generation": worst("gen_peak"),
                                 "decode": worst("decode_peak")}
    return result


def fast_path_name(levers: list[str]) -> str:
    """The DiT's execution in a word: "compile+graphs", "compile", "graphs" or "eager", then "+fp8" when quantised."""
    on = [n for n in ("compile", "graphs") if n in levers]
    return "+".join((on or ["eager"]) + (["fp8"] if "fp8" in levers else []))


def summarise(req: BenchRequest, repeats: list[Repeat], text: TextTiming, flops: FlopPlan, random: bool,
              finite: bool, peak: float | None, attention: list[str], gpu: str, warmup_s: float,
              levers: list[str]) -> BenchResult:
    p = req.preset
    frames = p.geometry.video_frames_for(req.latent_frames)
    med = statistics.median
    fps_e2e = med(frames / r.total_s for r in repeats)
    rate = req.peak_tflops * 1e12
    dit, vae = sum(flops.dit_blocks), sum(flops.vae_blocks)
    block_floor = [(a + b) / rate for a, b in zip(flops.dit_blocks, flops.vae_blocks)]
    text_flops = t5_flops(p.configs.text_encoder, text.tokens)
    floor = {"fps_end_to_end": frames * rate / (dit + vae), "fps_generation": frames * rate / dit,
             "first_frame_s": (flops.dit_blocks[0] + flops.vae_first) / rate,
             "block_ms_p50": 1e3 * percentile(block_floor, 50),
             "block_ms_p95": 1e3 * percentile(block_floor, 95), "text_encode_s": text_flops / rate}
    return BenchResult(
        preset=p.name, device=str(req.device), gpu=gpu, dtype=str(req.dtype).removeprefix("torch."),
        torch=torch.__version__, frames=frames, latent_frames=req.latent_frames, blocks=len(flops.dit_blocks),
        block_frames=p.block_frames, steps=list(p.steps), height=p.height, width=p.width,
        weights="random" if random else "cached", attention=attention, repeat=req.repeat, target_fps=p.fps,
        fps_end_to_end=fps_e2e, fps_generation=med(frames / r.gen_s for r in repeats),
        first_frame_s=med(r.first_s for r in repeats),
        block_ms_p50=med(1e3 * percentile(r.block_s, 50) for r in repeats),
        block_ms_p95=med(1e3 * percentile(r.block_s, 95) for r in repeats),
        text_encode_s=text.encode_s, text_load_s=text.load_s, text_tokens=text.tokens, peak_vram_gib=peak,
        text_peak_vram_gib=text.peak_gib, realtime=fps_e2e >= p.fps, realtime_factor=fps_e2e / p.fps,
        decoder=req.options.decoder, fast_path=fast_path_name(levers), levers=levers,
        warmup_s=warmup_s,
        finite=finite, dit_tflop=dit / 1e12, vae_decode_tflop=vae / 1e12, text_encode_tflop=text_flops / 1e12,
        peak_tflops=req.peak_tflops, floor=floor)
