"""The front door: one `Session` holds what runs need — the resolved options, the memory plan, the prompt encoder and
the loaded, configured engine — and runs jobs on it. Every front end goes through it: the `cf` commands, `cf live`,
and Python callers (`cfcli.Session`, `cfcli.generate`).

    with cfcli.Session(preset="framewise") as s:
        s.generate("a fox running through snow", seed=1, out="fox.mp4")
        s.extend("fox.mp4", prompt="the fox jumps into a river", frames=32)

Options resolve as the CLI resolves them: an argument, else its environment variable (`CF_DEVICE`, `CF_DTYPE`,
`CF_CODEC`, `CF_CRF`, `CF_PRESET`, `CF_OUTPUT_DIR`), else the config file, else the preset or built-in default.
Everything a job is asked is checked before anything loads; the models load once, on first need, and stay loaded
(compiled blocks and captured graphs too) until `close()`.
"""

import gc
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cfcli import hub
from cfcli.config import output_dir, read_config, setting
from cfcli.errors import CfError
from cfcli.pipeline import ahead as pipeline_ahead
from cfcli.pipeline import containers
from cfcli.pipeline.engine import Engine, EngineOptions
from cfcli.pipeline.extend import ExtendRequest, plan_extend
from cfcli.pipeline.files import Summary, reserve_outputs
from cfcli.pipeline.generate import GenerateRequest
from cfcli.pipeline.limits import check_length, check_options
from cfcli.pipeline.loras import adapters_for
from cfcli.pipeline.memory import MemoryPlan, check_host_memory, plan_run, with_kept_text
from cfcli.pipeline.outputs import slug
from cfcli.pipeline.plan import VideoPlan, plan_video, with_noise_frames, with_resolution
from cfcli.pipeline.prompts import build_schedule
from cfcli.pipeline.samplers import sampler_kind
from cfcli.pipeline.sinks import Progress
from cfcli.pipeline.text import PromptEncoder
from cfcli.presets import Preset, load_preset, preset_name

DTYPES = ("float32", "bfloat16", "float16")
SEED_RANGE = 2**31  # seeds drawn when none is given


@dataclass(frozen=True)
class SpeedFlags:
    """The speed flags every model command takes (`--compile`, `--cuda-graphs`, `--quantize`, `--decoder`,
    `--plain`), as one value."""

    compile: bool | None = None  # None: auto (`Session.one_shot`)
    cuda_graphs: bool = True
    quantize: str | None = None
    decoder: str = "wan"
    plain: bool = False

    def options(self, compile_auto: bool = True) -> EngineOptions:
        """The engine options they ask for, `compile_auto` standing in for a `compile` left to auto. The tuned VAE
        decoder rides on compile / graphs (its fused kernels on compile); `plain` turns every lever off and refuses
        the ones asked for by name."""
        compile = compile_auto if self.compile is None else self.compile
        if not self.plain:
            return EngineOptions(compile, self.cuda_graphs, self.quantize, self.decoder,
                                 tuned_vae=compile or self.cuda_graphs, fused_vae=compile)
        if self.quantize is not None or self.decoder != "wan":
            raise CfError("--plain runs the reference modules: no --quantize, no --decoder taehv",
                          "leave out --plain, or those options")
        return EngineOptions.plain()


def pick_device(device: str | None) -> torch.device:
    """`device`, else CF_DEVICE / the config file, else CUDA when there is a GPU; refused unless it can run here."""
    device = device if device is not None else setting("device", read_config())
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise CfError(f"unknown device {device!r}", "use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise CfError(f"--device {device} is not supported: cf runs on a CUDA GPU or the CPU",
                      "use --device cpu (slow), or a machine with a CUDA GPU")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CfError("CUDA is not available on this machine",
                      "use --device cpu (slow) or install a CUDA build of torch")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CfError(f"there is no GPU {dev.index}: this machine has {torch.cuda.device_count()}",
                      f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """`dtype`, else CF_DTYPE / the config file, else bfloat16 on a GPU and float32 on the CPU."""
    dtype = dtype if dtype is not None else setting("dtype", read_config())
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise CfError(f"unknown dtype {dtype!r}", f"use one of: {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def new_seed(seed: int | None) -> int:
    return seed if seed is not None else random.SystemRandom().randrange(SEED_RANGE)


def pick_codec(codec: str | None, out: Path | None) -> containers.Codec:
    """The codec to write: `codec`, else CF_CODEC / the config file, else the one `out`'s suffix means, else h264;
    checked against `out`'s container (FFV1 in MP4 is refused, it plays nowhere)."""
    name = codec or setting("codec", read_config())
    name = name or (containers.for_suffix(out.suffix) if out is not None else None) or "h264"
    chosen = containers.get(name)
    if out is not None:
        containers.check_pair(chosen, out.suffix)
    return chosen


def pick_crf(crf: int | None) -> int:
    if crf is not None:
        return crf
    value = setting("crf", read_config())
    return int(value) if value is not None else 18


class Session:
    """A preset's engine on one device, planned, loaded on first need and kept until `close()`.

    `preset` (a name or a YAML file) or `mode`/`steps` pick the preset; `height`/`width` change its size; `compile`,
    `cuda_graphs`, `quantize`, `decoder`, `plain` are the speed flags (or give `speed`); `max_vram`/`low_vram` set the
    memory budget; `lora`: LoRAs merged into the DiT after the preset's own (`loras:`), each `FILE[:SCALE]`, a
    `(file, scale)` pair or a `cfcli.lora.spec.LoraSpec`, the file local or on the Hub (`owner/repo/path`,
    downloaded by `cf download --lora`); `random_weights`: random weights of the preset's size (True), the downloaded
    ones (False), or random only when they are not downloaded (None); `keep_text`: umT5 stays loaded between jobs
    when the memory plan has room for it beside the DiT (None, the default), always (True: `cf live`, on the CPU where
    the GPU has no room) or never (False: a one-off run). `one_shot`: the session makes one video and ends (`cf
    generate`, `cf extend`, `cfcli.generate`): `compile` left to auto is then off for a video inside the KV-cache
    horizon (`compiles`). `status` hears a line before each model loads; `phases` (a
    `cfcli.pipeline.phases.Phases`) times the loads.
    """

    def __init__(self, preset: str | None = None, *, mode: str | None = None, steps: int | None = None,
                 device: str | None = None, dtype: str | None = None, height: int | None = None,
                 width: int | None = None, speed: SpeedFlags | None = None, max_vram: float | None = None,
                 low_vram: bool = False, lora: Sequence = (), random_weights: bool | None = False,
                 keep_text: bool | None = None, one_shot: bool = False,
                 status: Callable[[str], None] = lambda line: None, phases=None, **flags):
        unknown = set(flags) - set(SpeedFlags.__dataclass_fields__)
        if unknown:
            raise TypeError(f"Session() got unexpected options: {', '.join(sorted(unknown))}")
        self.speed = replace(speed or SpeedFlags(), **flags)
        self.preset: Preset = with_resolution(load_preset(preset_name(preset, mode, steps)), height, width)
        self.device = pick_device(device)
        self.asked_device = device  # as given (None: picked), for notes
        self.dtype = pick_dtype(dtype, self.device)
        self.loras = adapters_for(self.preset, lora)  # found and checked: a bad LoRA stops here
        self.options = replace(self.speed.options(), loras=self.loras)
        self.options.check(self.device, need_weights=random_weights is False)
        if max_vram is not None and not (max_vram == max_vram and 0 < max_vram < float("inf")):
            raise CfError(f"--max-vram must be a positive number of GiB, got {max_vram}", "e.g. --max-vram 11")
        self.max_vram, self.low_vram = max_vram, low_vram
        self.random_weights = random_weights
        self.stand_in = random_weights is None  # random TAEHV stands in for one that is not downloaded (`cf bench`)
        self.status, self.phases = status, phases
        self.memory: MemoryPlan | None = None  # the plan the engine runs (`plan_memory`)
        self.planned_for = 0  # latent frames the plan holds
        self.keep_text, self.one_shot = keep_text, one_shot
        self.text_device: str | None = None  # where a kept umT5 must go ("cuda" / "stream" / "cpu"), else the plan
        self.engine_loads = 0
        self.swaps_loras = False  # `set_loras` was called: the engine keeps what it needs to swap them in place
        self._engine: Engine | None = None
        self._encoder: PromptEncoder | None = None

    def attach(self, status: Callable[[str], None], phases=None) -> "Session":
        """Report the next jobs' loading to `status` and time them in `phases` (a resident `cf serve` session serves
        one client after another)."""
        self.status, self.phases = status, phases
        if self._encoder is not None:
            self._encoder.note, self._encoder.phases = status, phases
        return self

    # --- planning (before anything loads) ------------------------------------------------------------------------

    @property
    def uses_random_weights(self) -> bool:
        if self.random_weights is None:
            from cfcli.pipeline.random_weights import weights_cached

            self.random_weights = not weights_cached(self.preset)
        return self.random_weights

    def plan_memory(self, latent_frames: int) -> MemoryPlan | None:
        """The memory plan for videos of up to `latent_frames` latent frames (None off the GPU without --low-vram).
        Made once, before anything loads; a longer video later plans again, and an engine loaded under another
        plan is released (it loads again under the new one)."""
        if self.memory is not None and latent_frames <= self.planned_for:
            return self.memory
        if self.device.type == "cpu":  # weights found first, then host memory checked before any is built
            if not self.uses_random_weights:
                hub.resolve_all(self.preset)
            check_host_memory(self.preset, latent_frames, self.dtype, self.options.decoder)
        plan = plan_run(self.preset, latent_frames, self.device, self.dtype, self.options.decoder, self.max_vram,
                        self.low_vram)
        if self.keep_text is not False:
            kept = with_kept_text(plan, self.preset, latent_frames, self.dtype, self.options.decoder,
                                  self.text_device)
            plan = kept if self.keep_text or (kept is not None and kept.text == "resident") else plan
        same = plan.places_alike(self.memory) if plan is not None else self.memory is None
        if self._engine is not None and not same:
            self.status(f"memory plan changed for {latent_frames} latent frames: loading the models again")
            self.release()
        self.memory, self.planned_for = plan, max(latent_frames, self.planned_for)
        return plan

    def open_live(self, max_seconds: float | None = None, text_device: str | None = None,
                  swap_loras: bool = False) -> tuple[Engine, PromptEncoder]:
        """(engine, prompt encoder) for the live loop (`cfcli.live`): planned for a live video of up to
        `max_seconds` (default: the model's position table) with umT5 kept loaded beside the DiT. `swap_loras` (`cf
        live`, whose page swaps LoRAs while playing): an engine loaded from here on keeps the weights its LoRAs change
        as loaded, so the first swap is in place too (`Engine.remerge`)."""
        self.swaps_loras = self.swaps_loras or swap_loras
        most = self.preset.geometry.max_latent_frames
        frames = most if max_seconds is None else min(most, self.video_plan("live", seconds=max_seconds).latent_frames)
        kept = self.keep_text is True and self._encoder is not None and self._encoder.keep
        if not (kept and frames <= self.planned_for and text_device in (None, self.text_device)):
            self.keep_text_loaded(frames, text_device)  # planned again, umT5 loaded and kept
        return self.engine, self.encoder.load()

    def keep_text_loaded(self, latent_frames: int, text_device: str | None = None) -> PromptEncoder:
        """Plan for a run that keeps umT5 loaded beside the DiT (`cf live`), `text_device` ("cuda" / "stream" / "cpu") or
        placed by the plan; returns the encoder, loaded."""
        if text_device not in (None, "cpu", "cuda", "stream"):
            raise CfError(f"unknown --text-device {text_device!r}", "use cuda, stream or cpu")
        if text_device in ("cuda", "stream") and self.device.type != "cuda":
            raise CfError(f"--text-device {text_device} needs the run on a GPU", "use --text-device cpu")
        self.keep_text, self.text_device = True, text_device
        self.memory, self._encoder = None, None  # planned again, umT5 kept
        self.plan_memory(latent_frames)
        return self.encoder.load()

    def video_plan(self, prompt: str | None, *, frames: int | None = None, seconds: float | None = None,
                   fps: float | None = None, image: Path | str | None = None,
                   prompt_at: Sequence[tuple[str, str]] = (), prompt_schedule: Path | str | None = None,
                   noise_frames: int | None = None) -> VideoPlan:
        """The plan of one video (frames rounded up to whole blocks, prompt switches placed), refused here when it
        cannot be made; `noise_frames`: made as the first frames of a run that long (how a live recording is
        remade)."""
        p = self.preset
        check_options(frames, seconds, fps=fps)
        fps = fps or p.fps
        want = frames if frames is not None else (round(seconds * fps) + 1 if seconds is not None else p.frames)
        check_length(want, "--frames" if seconds is None else "--seconds", seconds, fps, p.geometry)
        schedule = build_schedule(prompt, list(prompt_at), Path(prompt_schedule) if prompt_schedule else None)
        image = Path(image) if image is not None else None
        return with_noise_frames(plan_video(p, want, fps, image, None if schedule else prompt, schedule), noise_frames)

    def generate_request(self, prompt: str | None, *, frames: int | None = None, seconds: float | None = None,
                         fps: float | None = None, seed: int | None = None, image: Path | str | None = None,
                         out: Path | str | None = None, overwrite: bool = False, codec: str | None = None,
                         crf: int | None = None, save_latents: Path | str | None = None,
                         prompt_at: Sequence[tuple[str, str]] = (), prompt_schedule: Path | str | None = None,
                         noise_frames: int | None = None) -> GenerateRequest:
        """Everything `generate` is asked, checked and planned, nothing loaded or written."""
        check_options(seed=seed, crf=crf)
        plan = self.video_plan(prompt, frames=frames, seconds=seconds, fps=fps, image=image, prompt_at=prompt_at,
                               prompt_schedule=prompt_schedule, noise_frames=noise_frames)
        seed = new_seed(seed)
        out = Path(out).expanduser() if out is not None else None
        fmt = pick_codec(codec, out)
        out = out or output_dir() / f"{slug(plan.prompt)}-{seed}{fmt.suffix}"
        return GenerateRequest(plan, seed, out, self.device, self.dtype, fmt.name, pick_crf(crf),
                               Path(save_latents) if save_latents is not None else None, self.options, overwrite)

    def extend_request(self, clip: Path | str, *, prompt: str | None = None, frames: int | None = None,
                       seconds: float | None = None, fps: float | None = None, context_frames: int | None = None,
                       only_new: bool = False, seed: int | None = None, out: Path | str | None = None,
                       overwrite: bool = False, codec: str | None = None, crf: int | None = None,
                       save_latents: Path | str | None = None) -> ExtendRequest:
        """Everything `extend` is asked, checked and planned (the clip probed, not decoded), nothing loaded."""
        p, clip = self.preset, Path(clip).expanduser()
        check_options(frames, seconds, seed, fps, crf)
        if frames is not None:
            check_length(frames, "--frames", geometry=p.geometry)
        if not sampler_kind(p).starts_from_frames:
            raise CfError(f"{p.name} cannot extend clips", "use --mode framewise or --mode chunkwise")
        plan = plan_extend(p, clip, prompt, frames, seconds, fps, context_frames, only_new)
        seed = new_seed(seed)
        out = Path(out).expanduser() if out is not None else None
        fmt = pick_codec(codec, out)
        out = out or clip.with_name(f"{clip.stem}-extended-{seed}{fmt.suffix}")
        return ExtendRequest(plan, seed, out, self.device, self.dtype, fmt.name, pick_crf(crf),
                             Path(save_latents) if save_latents is not None else None, self.options, overwrite)

    @contextmanager
    def reserve(self, req: GenerateRequest | ExtendRequest) -> Iterator[GenerateRequest | ExtendRequest]:
        """The request with its outputs reserved (checked, locked, temp files made) until the block ends; also
        plans the memory for it, so a run that cannot fit is refused before anything is written."""
        self.plan_memory(req.plan.run_latent_frames)
        inputs = (req.clip,) if isinstance(req, ExtendRequest) else ()
        with reserve_outputs(req.out, req.save_latents, req.overwrite, req.codec, req.crf, req.preset,
                             inputs=inputs) as outputs:
            yield replace(req, outputs=outputs)

    # --- the models ----------------------------------------------------------------------------------------------

    @property
    def encoder(self) -> PromptEncoder:
        """The prompt encoder, umT5 placed by the memory plan (`cf live`: kept loaded)."""
        if self._encoder is None:
            placement = self.memory.text if self.memory is not None else "resident"
            keep = self.memory.text_kept if self.memory is not None else self.keep_text is True
            if self.uses_random_weights:
                from cfcli.pipeline.random_weights import RandomPromptEncoder

                self._encoder = RandomPromptEncoder(self.preset, self.device, self.dtype, placement=placement,
                                                    keep=keep, note=self.status, phases=self.phases)
            else:
                self._encoder = PromptEncoder(self.preset, self.device, self.dtype, placement=placement, keep=keep,
                                              note=self.status, phases=self.phases)
        return self._encoder

    def encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """umT5 features of each distinct prompt, in one encoder load (before the DiT loads, unless it is loaded)."""
        texts = list(dict.fromkeys(prompts))
        return dict(zip(texts, self.encoder.encode(texts))) if texts else {}

    @property
    def engine(self) -> Engine:
        """The loaded, configured engine (loaded on first use, under the memory plan)."""
        if self._engine is None:
            self.plan_memory(self.preset.geometry.max_latent_frames if self.memory is None else self.planned_for)
            self._engine = self._load_engine()
        return self._engine

    def _load_engine(self) -> Engine:
        from cfcli.pipeline.phases import maybe_span

        p, dev, dt = self.preset, self.device, self.dtype
        from cfcli.pipeline.random_weights import decoder_model, random_engine

        random = self.uses_random_weights
        if self.speed.compile is None:
            self.options = replace(self.speed.options(compile_auto=self.compiles()), loras=self.loras)
        # The compiler's imports overlap the load (`cfcli.pipeline.ahead`); configure needs them.
        ahead = pipeline_ahead.start() if dev.type == "cuda" and self.options.compile else None
        if random:
            self.status(f"building {p.name} with random weights on {dev}")
            engine = random_engine(p, dev, dt)
        else:
            engine = Engine.load(p, dev, dt, note=self.status, phases=self.phases)
        decoder = decoder_model(self.options.decoder, random, dev) if random or self.stand_in else None
        self.engine_loads += 1
        with maybe_span(self.phases, "configure"):
            if ahead is not None:
                ahead.wait()
            return engine.configure(self.options, self.memory, decoder, keep_loaded=self.swaps_loras)

    def compiles(self) -> bool:
        """Whether `compile` left to auto compiles: yes where the engine stays loaded, and for a video past the
        KV-cache horizon (its blocks then run eagerly, where compiled code pays most); not for a one-shot video inside
        it, whose blocks replay CUDA graphs: there a fresh process spends more on the compiler (imports, tracing)
        than compiled blocks save (measured in docs/performance.md)."""
        return not self.one_shot or self.planned_for > self.preset.geometry.max_latent_frames

    def set_loras(self, lora: Sequence) -> None:
        """Merge `lora` (as `Session(lora=...)`; the preset's own stay) in place of the LoRAs now merged, for the next
        job. Checked first (a bad file changes nothing). A loaded engine swaps them in place when its weights are
        plain and it kept them as loaded (compiled code and CUDA graphs stay valid); otherwise it is loaded again, this
        time keeping them, so the next swap is in place."""
        loras = adapters_for(self.preset, lora)
        self.options, self.loras, self.swaps_loras = replace(self.options, loras=loras), loras, True
        engine = self._engine
        if engine is not None and engine.can_remerge:
            engine.remerge(loras)
            return
        if engine is not None:
            self.status("LoRAs changed: loading the models again")
            self.release()

    # --- jobs ----------------------------------------------------------------------------------------------------

    def run(self, req: GenerateRequest | ExtendRequest,
            on_progress: Callable[[Progress], None] = lambda p: None) -> Summary:
        """Run a request (`generate_request`, `extend_request`; reserved by `reserve` or here): its prompts encoded
        where they are not, the engine loaded where it is not, the video streamed into its file."""
        from cfcli.pipeline import extend, generate

        self.plan_memory(req.plan.run_latent_frames)
        if isinstance(req, ExtendRequest):
            features = self.encode([req.plan.prompt])[req.plan.prompt]
            return extend.run(req, self.engine, features, on_progress)
        plan = req.plan if req.plan.features else req.plan.with_features(self.encode(req.plan.prompts()))
        return generate.run(replace(req, plan=plan), self.engine, on_progress)

    def generate(self, prompt: str | None = None, *, on_progress: Callable[[Progress], None] = lambda p: None,
                 **options) -> Summary:
        """Make one clip (the options of `cf generate`: frames, seconds, fps, seed, image, out, overwrite, codec,
        crf, save_latents, prompt_at, prompt_schedule); returns its `Summary` (path, frames, seed, timings,
        metadata)."""
        req = self.generate_request(prompt, **options)
        with self.reserve(req) as reserved:
            return self.run(reserved, on_progress)

    def extend(self, clip: Path | str, *, on_progress: Callable[[Progress], None] = lambda p: None,
               **options) -> Summary:
        """Continue a clip (the options of `cf extend`: prompt, frames, seconds, fps, context_frames, only_new, seed,
        out, overwrite, codec, crf, save_latents); returns its `Summary`."""
        req = self.extend_request(clip, **options)
        with self.reserve(req) as reserved:
            return self.run(reserved, on_progress)

    def stream(self, prompt: str | None = None, *, seed: int | None = None, **options) -> Iterator[torch.Tensor]:
        """The frames of one video as they are made, no file: uint8 tensors [n, H, W, 3] on the CPU, a few frames
        at a time (options: frames, seconds, fps, image, prompt_at, prompt_schedule). Stop early by closing the
        iterator (or breaking out of the loop)."""
        from cfcli.pipeline.media import load_image

        plan = self.video_plan(prompt, **options)
        self.plan_memory(plan.run_latent_frames)
        plan = plan.with_features(self.encode(plan.prompts()))
        engine, p = self.engine, self.preset
        context = None
        if plan.image is not None:
            context = engine.encode_video(load_image(plan.image, p.width, p.height)[:, None])
        chunks = engine.generate(plan.text(engine.text_kv), plan.generated, new_seed(seed), context,
                                 run_frames=plan.run_generated)
        try:
            for chunk in chunks:
                yield chunk.host_pixels().permute(0, 2, 3, 1)
        finally:
            chunks.close()

    def bench(self, latent_frames: int, repeat: int = 3, peak_tflops: float | None = None,
              save_latents: Path | None = None, status: Callable[[str], None] = lambda m: None):
        """Time warm generations of `latent_frames` on this session's engine (`cfcli.pipeline.bench`): the
        text encoder first, then the DiT and VAE loaded as a run loads them."""
        from cfcli.pipeline import bench

        plan = self.plan_memory(latent_frames)
        req = bench.BenchRequest(self.preset, self.device, self.dtype, latent_frames, repeat, self.uses_random_weights,
                                 peak_tflops=peak_tflops or bench.DEFAULT_PEAK_TFLOPS, options=self.options, plan=plan,
                                 save_latents=save_latents)
        return bench.run(req, lambda: self.engine, status)

    # --- the end -------------------------------------------------------------------------------------------------

    def release(self) -> None:
        """Let go of the loaded models (the plan and options stay: the next job loads them again)."""
        if self._encoder is not None:
            self._encoder.release()
        self._engine = self._encoder = None
        gc.collect()  # compiled block stages refer back to their blocks: only the cycle collector frees them
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Free the GPU: models, compiled code and graphs, the cache buffer."""
        self.release()
        self.memory, self.planned_for = None, 0

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def generate(prompt: str | None = None, *, preset: str | None = None, device: str | None = None,
             frames: int | None = None, seed: int | None = None, out: Path | str | None = None,
             save_latents: Path | str | None = None, **options) -> Summary:
    """One clip in one call: a `Session` opened, `Session.generate` run and the session closed. `options` are the
    session's (mode, steps, dtype, height, width, compile, cuda_graphs, quantize, decoder, plain, max_vram, low_vram,
    lora)
    and the job's (seconds, fps, image, overwrite, codec, crf, prompt_at, prompt_schedule, on_progress)."""
    session_keys = {"mode", "steps", "dtype", "height", "width", "speed", "max_vram", "low_vram", "lora",
                    "random_weights", "keep_text", "one_shot", "status", *SpeedFlags.__dataclass_fields__}
    opened = {"keep_text": False, "one_shot": True} | {k: options.pop(k) for k in list(options) if k in session_keys}
    with Session(preset, device=device, **opened) as session:
        return session.generate(prompt, frames=frames, seed=seed, out=out, save_latents=save_latents, **options)
