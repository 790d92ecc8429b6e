"""One generation job, from request to file: models, prompt features, streaming sampler, decoder and writer.

The CLI builds a `GenerateRequest`, the job reports `Progress` through a callback and returns a `Summary`. The video
file is written block by block while later blocks are generated; on an error the half-written file is removed, on
Ctrl-C it is closed so the frames made so far play.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cfcli import __version__
from cfcli.errors import CfError
from cfcli.pipeline import containers
from cfcli.pipeline.engine import Chunk, Engine, EngineOptions, video_frames_for
from cfcli.pipeline.media import check_image_input, load_image
from cfcli.pipeline.prompts import PromptSchedule, TextSchedule
from cfcli.pipeline.sinks import Progress, Sink, stream
from cfcli.pipeline.text import PromptEncoder
from cfcli.pipeline.video import VideoWriter
from cfcli.presets import Preset, presets_dir


@dataclass
class GenerateRequest:
    prompt: str
    preset: Preset
    seed: int
    video_frames: int
    out: Path
    device: torch.device
    dtype: torch.dtype
    codec: str = "h264"
    crf: int = 18
    fps: int | None = None
    image: Path | None = None
    save_latents: Path | None = None
    schedule: PromptSchedule | None = None  # prompt switches; its opening prompt is `prompt`
    options: EngineOptions = EngineOptions()  # when `run` loads the engine itself


@dataclass
class Summary:
    path: Path
    frames: int
    fps: int
    seconds: float
    first_frame_s: float | None
    elapsed: float
    seed: int
    preset: str
    interrupted: bool = False
    extra: dict = field(default_factory=dict)
    made: int | None = None  # frames generated in this run (an extended clip's copied frames excluded)

    @property
    def generated(self) -> int:
        return self.frames if self.made is None else self.made

    @property
    def generation_fps(self) -> float:
        return self.generated / self.elapsed if self.elapsed > 0 else 0.0


def plan_frames(preset: Preset, video_frames: int, image: bool) -> tuple[int, int]:
    """(video frames, generated latent frames) for a request, rounded up to what the model can make."""
    if video_frames <= 0:
        raise CfError(f"--frames must be positive, got {video_frames}")
    latents = -(-(video_frames - 1) // 4) + 1
    generated = latents - (1 if image else 0)
    bf = preset.block_frames
    generated = max(bf, -(-generated // bf) * bf)
    latents = generated + (1 if image else 0)
    return video_frames_for(latents), generated


def metadata(prompt: str, seed: int, p: Preset, frames: int, fps: float, schedule: PromptSchedule | None = None,
             **extra) -> dict:
    """How a clip was made, stored in its container (`cf extend` reads the prompt back)."""
    if schedule is not None and schedule.has_switches:
        extra = {"prompt_schedule": schedule.as_metadata()} | extra
    return {"prompt": prompt, "seed": seed, "preset": p.name, "mode": p.mode, "steps": list(p.steps),
            "frames": frames, "fps": fps, "cfcli": __version__} | extra


def made_with(req) -> dict:
    """Metadata beyond the prompt and preset: what else decides the pixels and the file (for `cf info`)."""
    facts = {"width": req.preset.width, "height": req.preset.height, "device": req.device.type,
             "dtype": str(req.dtype).removeprefix("torch."), "codec": req.codec, "decoder": req.options.decoder}
    if containers.get(req.codec).tagged_bt709:  # the codecs CRF applies to
        facts["crf"] = req.crf
    if req.options.quantize:
        facts["quantize"] = req.options.quantize
    if req.preset.source is not None and req.preset.source.parent != presets_dir():  # its name cannot remake it
        facts["preset_file"] = str(req.preset.source.resolve())
    if getattr(req, "image", None) is not None:
        facts["image"] = Path(req.image).name
    return facts


def run(req: GenerateRequest, on_progress: Callable[[Progress], None] = lambda p: None,
        engine: Engine | None = None, prompt_encoder: PromptEncoder | None = None) -> Summary:
    p = req.preset
    if not req.prompt.strip():
        raise CfError("the prompt is empty", "describe the video to generate, e.g. cf generate \"a fox running\"")
    check_image_input(p, req.image)
    image = load_image(req.image, p.width, p.height) if req.image is not None else None
    frames, generated = plan_frames(p, req.video_frames, image is not None)
    schedule = req.schedule or PromptSchedule.build(req.prompt, [])
    starts = schedule.block_starts(req.fps or p.fps, frames, p.block_frames)  # a switch that never shows: refused
    prompt_encoder = prompt_encoder or PromptEncoder(p, req.device, req.dtype)
    prompts = schedule.prompts()
    features = prompt_encoder.encode(prompts)  # each distinct prompt once, before the DiT loads
    if engine is None:
        engine = Engine.load(p, req.device, req.dtype).configure(req.options)
    kv = {text: engine.text_kv(f) for text, f in zip(prompts, features)}
    text_kv = (TextSchedule(starts, tuple(kv[e.prompt] for e in schedule.entries)) if schedule.has_switches
               else kv[schedule.opening])
    ctx_latents = engine.encode_video(image[:, None]) if image is not None else None
    fps = req.fps or p.fps
    meta = metadata(req.prompt, req.seed, p, frames, fps, req.schedule, **made_with(req))
    writer = SafeWriter(req.out, fps, p.width, p.height, req.codec, req.crf, meta)
    chunks = engine.generate(text_kv, generated, req.seed, ctx_latents)
    return stream_to_file(chunks, writer, frames, req, on_progress, write_context=True)


def stream_to_file(chunks: Iterable[Chunk], writer: "SafeWriter", total: int, req, on_progress,
                   write_context: bool, extra_sinks: Sequence[Sink] = ()) -> Summary:
    """Stream the chunks into the video file (and any `extra_sinks`, e.g. a live view); the summary of the file."""
    fps, before = writer.fps, writer.frames
    done = stream(chunks, [writer, *extra_sinks], total, on_progress, write_context,
                  keep_latents=req.save_latents is not None, frames_before=writer.frames)
    if req.save_latents is not None and not done.interrupted:
        save_latents(req.save_latents, torch.cat(done.latents))
    return Summary(writer.path, writer.frames, fps, writer.frames / fps, done.first_frame_s, done.elapsed,
                   req.seed, req.preset.name, interrupted=done.interrupted, made=done.frames - before)


class SafeWriter(VideoWriter):
    """A VideoWriter that can be aborted: the half-written file is removed."""

    def __init__(self, out: Path, *args, **kwargs):
        out = Path(out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            super().__init__(out, *args, **kwargs)
        except (OSError, PermissionError) as exc:
            raise CfError(f"cannot write the video to {out}: {exc.strerror or exc}",
                          "choose a writable --out path") from exc
        except Exception as exc:  # PyAV raises its own errors for bad containers
            raise CfError(f"cannot write the video to {out}: {exc}".splitlines()[0],
                          "choose an --out path ending in .mp4 or .mkv (ffv1 needs .mkv)") from exc

    def abort(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the file is deleted anyway
            pass
        self.path.unlink(missing_ok=True)


def save_latents(path: Path, latents: torch.Tensor) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents.float().cpu().contiguous()}, str(path))
