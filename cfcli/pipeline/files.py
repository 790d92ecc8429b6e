"""A run's files: reserved before anything loads, written while the video streams, put in place when complete.

The video is written block by block to a temp file beside the output (`SafeWriter`), renamed into place when
complete; on an error the temp file is removed and what was at the output path stays as it was; on Ctrl-C (or
SIGTERM/SIGHUP) the file is closed so the frames made so far play, with metadata that says so. `OutputRequest` holds
what every job that writes a clip asks for (`cfcli.pipeline.generate`, `cfcli.pipeline.extend`).
"""

from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cfcli.version import __version__
from cfcli.errors import CfError
from cfcli.pipeline import containers
from cfcli.pipeline.engine import Chunk, EngineOptions
from cfcli.pipeline.outputs import Outputs, Target, check, reserve, same_file, write_error
from cfcli.pipeline.prompts import PromptSchedule
from cfcli.pipeline.signals import finalising
from cfcli.pipeline.sinks import Background, Sink, stream
from cfcli.pipeline.video import VideoWriter, rewrite_metadata
from cfcli.presets import Preset, presets_dir


@dataclass
class OutputRequest:
    """What a job that writes a clip is asked for, beside its plan: seed, where, how it is encoded, on what."""

    plan: object  # the job's plan: `cfcli.pipeline.plan.VideoPlan` or `cfcli.pipeline.extend.ExtendPlan`
    seed: int
    out: Path
    device: torch.device
    dtype: torch.dtype
    codec: str = "h264"
    crf: int = 18
    save_latents: Path | None = None
    options: EngineOptions = EngineOptions()  # what the engine runs with (recorded in the metadata)
    overwrite: bool = False  # replace existing files at `out` / `save_latents`
    outputs: Outputs | None = None  # reserved by the caller before the models loaded (`reserve_outputs`)

    @property
    def preset(self) -> Preset:
        return self.plan.preset


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
    metadata: dict = field(default_factory=dict)  # how the clip was made, as its file records it (`metadata`)

    @property
    def generated(self) -> int:
        return self.frames if self.made is None else self.made

    @property
    def generation_fps(self) -> float:
        return self.generated / self.elapsed if self.elapsed > 0 else 0.0


def metadata(prompt: str, seed: int, p: Preset, frames: int, fps: float, schedule: PromptSchedule | None = None,
             **extra) -> dict:
    """How a clip was made, stored in its container (`cf extend` reads the prompt back)."""
    if schedule is not None and schedule.has_switches:
        extra = {"prompt_schedule": schedule.as_metadata()} | extra
    return {"prompt": prompt, "seed": seed, "preset": p.name, "mode": p.mode, "steps": list(p.steps),
            "frames": frames, "fps": fps, "cfcli": __version__} | extra


def made_with(req) -> dict:
    """Metadata beyond the prompt and preset: what else decides the pixels and the file (for `cf info`)."""
    return run_facts(req.preset, req.device, req.dtype, req.codec, req.crf, req.options.decoder, req.options.quantize,
                     getattr(req, "image", None), getattr(req.plan, "noise_frames", None), req.options.loras)


def run_facts(preset: Preset, device: torch.device, dtype: torch.dtype, codec: str, crf: int, decoder: str,
              quantize: str | None = None, image: Path | None = None, noise_frames: int | None = None,
              loras: Sequence = ()) -> dict:
    """What decides a clip's pixels and file beyond its prompt, seed and preset: what `cf info` remakes it from
    (`loras`: the `cfcli.pipeline.loras.Adapter`s merged)."""
    facts = {"width": preset.width, "height": preset.height, "device": device.type,
             "dtype": str(dtype).removeprefix("torch."), "codec": codec, "decoder": decoder}
    if containers.get(codec).tagged_bt709:  # the codecs CRF applies to
        facts["crf"] = crf
    if quantize:
        facts["quantize"] = quantize
    if preset.source is not None and preset.source.parent != presets_dir():  # its name cannot remake it
        facts["preset_file"] = str(preset.source.resolve())
    if image is not None:
        facts["image"] = str(Path(image).resolve())  # the remake names it from wherever it runs
    if noise_frames is not None:
        facts["noise_frames"] = noise_frames
    if loras:
        facts["loras"] = [a.facts() for a in loras]
    return facts


def reserve_outputs(out: Path, latents: Path | None, overwrite: bool, codec: str, crf: int, preset: Preset,
                    inputs: Sequence[Path] = ()) -> Outputs:
    """Reserve a run's video and latents files before anything loads (see `cfcli.pipeline.outputs`).

    The video container is opened once on the temp file, so a bad extension or codec fails now. The latents may not
    share a path with the video or with an input of the run.
    """
    for other, what in [(out, "the video's path"), *((path, "an input of the run") for path in inputs)]:
        if latents is not None and same_file(latents, other):
            raise CfError(f"--save-latents {latents} is {what}",
                          "give the latents a file of their own, e.g. latents.safetensors")
    if latents is not None:
        check(latents, overwrite, "--save-latents")  # before anything is made for the video
    video = reserve(out, overwrite)
    try:
        SafeWriter(video, preset.fps, preset.width, preset.height, codec, crf).close()
        return Outputs(video, reserve(latents, overwrite, "the latents", "--save-latents") if latents else None)
    except BaseException:
        video.discard()
        raise


def stream_to_file(chunks: Iterable[Chunk], writer: "SafeWriter", total: int, req, on_progress,
                   write_context: bool, extra_sinks: Sequence[Sink] = (), latents: Target | None = None) -> Summary:
    """Stream the chunks into the video file (and any `extra_sinks`, e.g. a live view), then put the file in place:
    renamed over the final path when complete, kept as a partial when interrupted; the latents (`latents`, a
    reserved target) are saved only for a complete video. The summary of the file."""
    fps, before = writer.fps, writer.frames
    # The encoder runs on a thread of its own, so a slow codec is a tail after the last block, not slower blocks.
    done = stream(chunks, [Background(writer), *extra_sinks], total, on_progress, write_context,
                  keep_latents=latents is not None, frames_before=writer.frames)
    try:
        if latents is not None and not done.interrupted:
            save_latents(latents, torch.cat(done.latents))
        path = writer.finish(done.interrupted)
        if latents is not None and not done.interrupted:
            latents.commit()
    except BaseException:
        writer.abort()  # a no-op once the video is in place
        raise
    finally:
        if latents is not None:
            latents.discard()  # a no-op once committed
    frames = writer.frames if path is not None else 0
    summary = Summary(path or writer.target.final, frames, fps, frames / fps, done.first_frame_s, done.elapsed,
                      req.seed, req.preset.name, interrupted=done.interrupted, made=done.frames - before,
                      metadata=writer.metadata | {"frames": frames})
    if path is not None and path != writer.target.final:
        summary.extra["left_untouched"] = writer.target.final
    return summary


@contextmanager
def write_errors(target: Target, codec: str = ""):
    """Any OSError or PyAV error while writing `target` as a CfError naming its path and the reason."""
    import av

    try:
        yield
    except (OSError, av.error.FFmpegError, ValueError) as exc:
        hint = None if getattr(exc, "errno", None) else \
            f"choose an --out PyAV can write {codec or 'the codec'} into: .mp4 or .mkv (ffv1 needs .mkv)"
        raise write_error(target.what, target.final, exc, hint) from exc


class SafeWriter(VideoWriter):
    """The file sink: frames go to a reserved temp file; what was at the final path is untouched until `finish`.

    `close` finalises the container and, when the run stopped early, rewrites its metadata to the frames it really
    holds (so a player and `cf extend` see the truth); `abort` removes the temp file. Every write error (an OSError of
    any kind, PyAV's own errors) becomes a CfError naming the final path.
    """

    def __init__(self, target: Target, fps: float, width: int, height: int, codec: str = "h264", crf: int = 18,
                 metadata: dict | None = None):
        self.target, self.metadata = target, metadata or {}
        with write_errors(target, codec):
            super().__init__(target.temp, fps, width, height, codec, crf, metadata)

    def write(self, frames: torch.Tensor) -> None:
        with write_errors(self.target):
            super().write(frames)

    def close(self) -> None:
        with finalising(), write_errors(self.target):
            super().close()
            if self.metadata.get("frames", self.frames) != self.frames:  # stopped: what it holds, of what was planned
                rewrite_metadata(self.target.temp, self.metadata | {"frames": self.frames,
                                                                    "planned_frames": self.metadata["frames"]})

    def abort(self) -> None:
        with finalising():
            try:
                VideoWriter.close(self)
            except Exception:  # noqa: BLE001 - the file is deleted anyway
                pass
            self.target.discard()

    def finish(self, interrupted: bool) -> Path | None:
        """Put the closed file in place: the final path, where the partial was kept, or None when it has no frame."""
        with finalising():
            if not interrupted:
                return self.target.commit()
            if self.frames == 0:
                self.target.discard()
                return None
            return self.target.keep_partial()


def save_latents(target: Target, latents: torch.Tensor) -> None:
    from safetensors.torch import save_file

    with write_errors(target):
        save_file({"latents": latents.float().cpu().contiguous()}, str(target.temp))
