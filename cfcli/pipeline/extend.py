"""Continue a clip: its last frames, VAE-encoded, prime the KV cache; new frames stream out after them.

Context frames follow the VAE's 1 + s·k structure, s its time stride (chunk-wise: whole 3-latent blocks). The new
frames' pixels come from one streaming decode of context + new latents with the context frames dropped, so the
decoder's causal cache has seen the context. The seed is applied after the context is encoded, right before the new
noise is drawn.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cfcli.errors import CfError
from cfcli.pipeline.clip_reader import ClipInfo, iter_frames, probe_clip, read_tail
from cfcli.pipeline.engine import Engine, EngineOptions
from cfcli.pipeline.generate import (Progress, SafeWriter, Summary, made_with, metadata, reserve_outputs,
                                     stream_to_file)
from cfcli.pipeline.outputs import Outputs
from cfcli.pipeline.media import fit_frames, to_model_range
from cfcli.pipeline.text import PromptEncoder
from cfcli.presets import Preset

DEFAULT_CONTEXT_LATENTS = {1: 5, 3: 6}  # frame-wise 17 frames, chunk-wise 21 frames (Wan2.1's VAE)


@dataclass
class ExtendRequest:
    clip: Path
    prompt: str | None
    preset: Preset
    seed: int
    new_frames: int | None
    out: Path
    device: torch.device
    dtype: torch.dtype
    context_frames: int | None = None
    only_new: bool = False
    codec: str = "h264"
    crf: int = 18
    fps: float | None = None
    save_latents: Path | None = None
    seconds: float | None = None  # instead of new_frames, at the output's frame rate
    options: EngineOptions = EngineOptions()  # when `run` loads the engine itself
    overwrite: bool = False  # replace existing files at `out` / `save_latents` (`out` may be `clip` itself)
    outputs: Outputs | None = None  # reserved by the caller before the models loaded (`reserve_outputs`)


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


def run(req: ExtendRequest, on_progress: Callable[[Progress], None] = lambda p: None,
        engine: Engine | None = None, note: Callable[[str], None] = lambda s: None,
        status: Callable[[str], None] = lambda s: None) -> Summary:
    """Extend one clip; its outputs are `req.outputs` when the caller reserved them, else reserved here first.
    `note` hears what was changed or rounded, `status` each model about to load."""
    with req.outputs or reserve_outputs(req.out, req.save_latents, req.overwrite, req.codec, req.crf, req.preset,
                                        inputs=(req.clip,)) as outputs:
        return _run(req, outputs, on_progress, engine, note, status)


def _run(req: ExtendRequest, outputs: Outputs, on_progress, engine, note, status) -> Summary:
    p = req.preset
    clip = load_clip(req.clip)  # before any model loads: a file that is not a video is refused here
    for line in clip.notes():
        note(line)
    prompt = req.prompt or clip.metadata.get("prompt")
    if not prompt or not str(prompt).strip():
        raise CfError(f"{req.clip} has no prompt in its metadata", 'pass --prompt "what happens next"')
    fps = req.fps or clip.fps or p.fps  # the clip's own rate, NTSC 29.97 included
    new_frames = req.new_frames if req.seconds is None else round(req.seconds * fps)
    if new_frames <= 0:
        raise CfError(f"--frames must be positive, got {new_frames}")
    n_ctx = context_latents(p, clip.frames, req.context_frames)
    h, w = clip.height, clip.width
    if (h, w) != (p.height, p.width):
        change = "crops and resizes" if w * p.height != h * p.width else "resizes"
        note(f"the clip is {w}×{h}; cfcli {change} it to the model's {p.width}×{p.height}")
    g = p.geometry
    new_latents = -(-g.continuation_latents(new_frames) // p.block_frames) * p.block_frames
    made = g.continuation_frames(new_latents)
    if made != new_frames:
        note(f"{new_frames} new frames is not a length the model makes; generating {made}")
    if n_ctx + new_latents > g.max_latent_frames:
        most = g.continuation_frames(g.max_latent_frames - n_ctx)
        raise CfError(f"{new_frames} new frames is more than the model's position table holds after the context",
                      f"extend by at most {most} frames at a time")
    context = fit_frames(read_tail(req.clip, g.video_frames_for(n_ctx), clip), p.width, p.height)
    if round(float(fps), 3) != p.fps:
        note(f"the clip plays at {fps:g} fps; the new frames move at the model's {p.fps} fps (played at "
             f"{fps:g}, recorded as motion_fps)")
    from cfcli.pipeline.memory import text_placement

    text = PromptEncoder(p, req.device, req.dtype, note=status,
                         placement=text_placement(req.options)).encode([prompt])[0]
    if engine is None:
        engine = Engine.load(p, req.device, req.dtype, note=status).configure(req.options)
    ctx_latents = engine.encode_video(to_model_range(context).permute(1, 0, 2, 3))
    total = made + (0 if req.only_new else clip.frames)
    meta = metadata(prompt, req.seed, p, total, round(float(fps), 3), extended_from=str(req.clip),
                    context_frames=g.video_frames_for(n_ctx), new_frames=made, only_new=req.only_new,
                    **made_with(req), **source_facts(clip, fps, p))
    writer = SafeWriter(outputs.video, fps, p.width, p.height, req.codec, req.crf, meta)
    if not req.only_new:
        try:
            for batch in iter_frames(req.clip, rotation=clip.rotation):  # streamed: the clip is never held whole
                writer.write(fit_frames(batch, p.width, p.height))
        except BaseException:
            writer.abort()
            raise
    chunks = engine.generate(engine.text_kv(text), new_latents, req.seed, ctx_latents)
    return stream_to_file(chunks, writer, total, req, on_progress, write_context=False, latents=outputs.latents)
