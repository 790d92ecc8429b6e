"""Continue a clip: its last frames, VAE-encoded, prime the KV cache; new frames stream out after them.

Context frames follow the VAE's 1 + s·k structure, s its time stride (chunk-wise: whole 3-latent blocks). The new
frames' pixels come from one streaming decode of context + new latents with the context frames dropped, so the
decoder's causal cache has seen the context. The seed is applied after the context is encoded, right before the new
noise is drawn.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cfcli.errors import CfError
from cfcli.pipeline.clip_reader import ClipInfo, iter_frames, probe_clip, read_tail
from cfcli.pipeline.engine import Engine
from cfcli.pipeline.files import (OutputRequest, SafeWriter, Summary, made_with, metadata, reserve_outputs,
                                  stream_to_file)
from cfcli.pipeline.media import fit_frames, to_model_range
from cfcli.pipeline.prompts import check_encodable
from cfcli.pipeline.outputs import Outputs
from cfcli.pipeline.sinks import Progress
from cfcli.presets import Preset

DEFAULT_CONTEXT_LATENTS = {1: 5, 3: 6}  # frame-wise 17 frames, chunk-wise 21 frames (Wan2.1's VAE)
DEFAULT_NEW_FRAMES = 64


@dataclass(frozen=True)
class ExtendPlan:
    """One continuation, worked out before any model loads: the clip, its prompt, `context` latent frames taken from
    its end, `generated` new latent frames, the rate the output plays at, and what the user should be told."""

    preset: Preset
    clip: ClipInfo
    prompt: str
    fps: float
    context: int
    generated: int
    only_new: bool
    notes: tuple[str, ...] = ()

    @property
    def new_frames(self) -> int:
        return self.preset.geometry.continuation_frames(self.generated)

    @property
    def context_frames(self) -> int:
        return self.preset.geometry.video_frames_for(self.context)

    @property
    def latent_frames(self) -> int:
        return self.context + self.generated

    @property
    def run_latent_frames(self) -> int:
        return self.latent_frames

    @property
    def total(self) -> int:
        """Frames in the output file."""
        return self.new_frames + (0 if self.only_new else self.clip.frames)


class ExtendRequest(OutputRequest):
    """One continuation (`plan`: an `ExtendPlan`); `out` may be the clip itself, with `overwrite`."""

    @property
    def clip(self) -> Path:
        return self.plan.clip.path


def load_clip(path: Path) -> ClipInfo:
    """The clip probed (frame count, rate, size, rotation) without decoding it; refused if it is not a video."""
    return probe_clip(Path(path))


def context_latents(preset: Preset, clip_frames: int, context_frames: int | None) -> int:
    """Latent frames of context: `--context-frames` checked, or the default that fits the clip."""
    bf, g = preset.block_frames, preset.geometry
    if context_frames is not None:
        if context_frames > clip_frames:
            raise CfError(f"--context-frames {context_frames} is more than the clip's {clip_frames} frames",
                          f"use at most {clip_frames}")
        try:
            n = g.latent_frames_for(context_frames)
        except ValueError:
            n = 0
        if n == 0 or n % bf:
            most = (clip_frames - 1) // g.time_stride + 1  # latent frames the clip can give
            valid = [g.video_frames_for(k) for k in range(bf, most + 1, bf)]
            raise CfError(f"--context-frames {context_frames} is not a valid context length for {preset.mode}",
                          f"use 1 + {g.time_stride}k frames"
                          f"{f' making whole {bf}-latent blocks' if bf > 1 else ''}, e.g. "
                          f"{', '.join(map(str, valid[:4])) or 'a longer clip'}")
        return n
    fit = (clip_frames - 1) // g.time_stride + 1
    n = min(DEFAULT_CONTEXT_LATENTS[bf], fit // bf * bf)
    if n == 0:
        raise CfError(f"the clip has {clip_frames} frames; a {preset.mode} context needs at least "
                      f"{g.video_frames_for(bf)}", "extend a longer clip or use --mode framewise")
    return n


def source_facts(clip: ClipInfo, fps: float, preset: Preset) -> dict:
    """What the extended clip keeps of its source: the seed that made it, and the new frames' own motion rate when
    the file plays at another one (a 30 fps clip continues with 16 fps motion, played at 30)."""
    facts = {"source_seed": clip.metadata["seed"]} if "seed" in clip.metadata else {}
    if round(float(fps), 3) != preset.fps:
        facts["motion_fps"] = preset.fps
    return facts


def plan_extend(preset: Preset, clip_path: Path | ClipInfo, prompt: str | None = None, new_frames: int | None = None,
                seconds: float | None = None, fps: float | None = None, context_frames: int | None = None,
                only_new: bool = False) -> ExtendPlan:
    """The plan of extending `clip_path` (probed, not decoded; or its `ClipInfo` when already probed) by `new_frames`
    frames or `seconds` (default `DEFAULT_NEW_FRAMES`), at the clip's own rate unless `fps` is given; every refusal
    happens here."""
    clip = clip_path if isinstance(clip_path, ClipInfo) else load_clip(clip_path)
    clip_path = clip.path
    prompt = prompt or clip.metadata.get("prompt")
    if not prompt or not str(prompt).strip():
        raise CfError(f"{clip_path} has no prompt in its metadata", 'pass --prompt "what happens next"')
    check_encodable(str(prompt))
    fps = fps or clip.fps or preset.fps  # the clip's own rate, NTSC 29.97 included
    if seconds is not None:
        asked = round(seconds * fps)
    else:
        asked = new_frames if new_frames is not None else DEFAULT_NEW_FRAMES
    if asked <= 0:
        raise CfError(f"--frames must be positive, got {asked}")
    g, bf = preset.geometry, preset.block_frames
    n_ctx = context_latents(preset, clip.frames, context_frames)
    generated = -(-g.continuation_latents(asked) // bf) * bf
    if n_ctx + generated > g.max_latent_frames:
        most = g.continuation_frames(g.max_latent_frames - n_ctx)
        raise CfError(f"{asked} new frames is more than the model's position table holds after the context",
                      f"extend by at most {most} frames at a time")
    plan = ExtendPlan(preset, clip, str(prompt), fps, n_ctx, generated, only_new)
    return replace(plan, notes=tuple(clip.notes()) + extend_notes(plan, asked))


def extend_notes(plan: ExtendPlan, asked: int) -> tuple[str, ...]:
    """What was changed or rounded: the clip's size, the length asked, the clip's rate against the model's."""
    p, clip, fps, notes = plan.preset, plan.clip, plan.fps, []
    if (clip.height, clip.width) != (p.height, p.width):
        change = "crops and resizes" if clip.width * p.height != clip.height * p.width else "resizes"
        notes.append(f"the clip is {clip.width}×{clip.height}; cfcli {change} it to the model's {p.width}×{p.height}")
    if plan.new_frames != asked:
        notes.append(f"{asked} new frames is not a length the model makes; generating {plan.new_frames}")
    if round(float(fps), 3) != p.fps:
        notes.append(f"the clip plays at {fps:g} fps; the new frames move at the model's {p.fps} fps (played at "
                     f"{fps:g}, recorded as motion_fps)")
    return tuple(notes)


def run(req: ExtendRequest, engine: Engine, features: torch.Tensor,
        on_progress: Callable[[Progress], None] = lambda p: None) -> Summary:
    """Extend one clip with the prompt's umT5 `features`; its outputs are `req.outputs` when the caller reserved them,
    else reserved here first."""
    with req.outputs or reserve_outputs(req.out, req.save_latents, req.overwrite, req.codec, req.crf, req.preset,
                                        inputs=(req.clip,)) as outputs:
        return _run(req, outputs, engine, features, on_progress)


def _run(req: ExtendRequest, outputs: Outputs, engine: Engine, features: torch.Tensor, on_progress) -> Summary:
    plan, p = req.plan, req.preset
    context = fit_frames(read_tail(req.clip, plan.context_frames, plan.clip), p.width, p.height)
    ctx_latents = engine.encode_video(to_model_range(context).permute(1, 0, 2, 3))
    meta = metadata(plan.prompt, req.seed, p, plan.total, round(float(plan.fps), 3),
                    extended_from=str(Path(req.clip).resolve()), context_frames=plan.context_frames,
                    new_frames=plan.new_frames, only_new=plan.only_new,
                    **made_with(req), **source_facts(plan.clip, plan.fps, p))
    writer = SafeWriter(outputs.video, plan.fps, p.width, p.height, req.codec, req.crf, meta)
    if not plan.only_new:
        try:
            for batch in iter_frames(req.clip, rotation=plan.clip.rotation):  # streamed: never held whole
                writer.write(fit_frames(batch, p.width, p.height))
        except BaseException:
            writer.abort()
            raise
    chunks = engine.generate(engine.text_kv(features), plan.generated, req.seed, ctx_latents)
    return stream_to_file(chunks, writer, plan.total, req, on_progress, write_context=False,
                          latents=outputs.latents)
