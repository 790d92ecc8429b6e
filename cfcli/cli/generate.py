"""`cf generate`: text (or picture) to video, streamed to the file block by block."""

import json
import re
from pathlib import Path

import typer
from typer.core import TyperCommand

from cfcli.cli.common import (CodecOpt, CompileOpt, CrfOpt, DecoderOpt, DeviceOpt, DtypeOpt, GraphsOpt, JsonOpt,
                              LowVramOpt, MaxVramOpt, ModeOpt, OverwriteOpt, PresetOpt, QuantizeOpt, QuietOpt, SeedOpt,
                              StepsOpt, check_out, console, friendly, new_seed, pick_device, pick_dtype, preset_name,
                              show_plan)
from cfcli.cli.progress import ProgressView
from cfcli.errors import CfError


def slug(text: str, n: int = 48) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (s[:n].rstrip("-")) or "video"


class _GenerateCommand(TyperCommand):
    """`--prompt-at TIME PROMPT`, repeatable: Typer cannot declare a repeated two-value option.

    The option is declared as a repeated string and each `--prompt-at TIME PROMPT` on the command line is joined here,
    before parsing, into one `TIME<TAB>PROMPT` value (a time never holds a tab). A "prompt" that starts with `--` is
    taken for the next option, so a missing prompt gives a clear error instead of swallowing the option.
    """

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, join_prompt_at(args))


def join_prompt_at(args: list[str]) -> list[str]:
    """Command-line tokens with each `--prompt-at TIME PROMPT` (or `--prompt-at=TIME PROMPT`) as one value."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--":  # everything after is positional
            return out + args[i:]
        if arg == "--prompt-at" and i + 2 < len(args) and not args[i + 2].startswith("--"):
            out += [arg, f"{args[i + 1]}\t{args[i + 2]}"]
            i += 3
        elif arg.startswith("--prompt-at=") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            out.append(f"{arg}\t{args[i + 1]}")
            i += 2
        else:
            out.append(arg)
            i += 1
    return out


def register(app: typer.Typer) -> None:
    @app.command("generate", cls=_GenerateCommand)
    @friendly
    def generate(
        prompt: str = typer.Argument(None, help="What the video shows."),
        preset: PresetOpt = None,
        mode: ModeOpt = None,
        steps: StepsOpt = None,
        frames: int = typer.Option(None, "--frames", help="Video frames (rounded up to what the model makes)."),
        seconds: float = typer.Option(None, "--seconds", help="Video length in seconds (instead of --frames)."),
        fps: int = typer.Option(None, "--fps", help="Playback frame rate (default: the preset's)."),
        seed: SeedOpt = None,
        image: Path = typer.Option(None, "--image", help="Start from this picture (frame-wise only)."),
        out: Path = typer.Option(None, "--out", "-o", help="Output file (default outputs/<prompt>-<seed>.mp4)."),
        overwrite: OverwriteOpt = False,
        codec: CodecOpt = "h264",
        crf: CrfOpt = 18,
        device: DeviceOpt = None,
        dtype: DtypeOpt = None,
        compile: CompileOpt = True,
        cuda_graphs: GraphsOpt = True,
        quantize: QuantizeOpt = None,
        decoder: DecoderOpt = "wan",
        max_vram: MaxVramOpt = None,
        low_vram: LowVramOpt = False,
        save_latents: Path = typer.Option(None, "--save-latents", help="Also write the latents (safetensors)."),
        prompt_file: Path = typer.Option(None, "--prompt-file", help="One prompt per line; models load once."),
        prompt_at: list[str] = typer.Option(None, "--prompt-at", metavar="TIME PROMPT",
                                            help="Switch to PROMPT at TIME (12s, 12.5, 1:05); repeatable."),
        prompt_schedule: Path = typer.Option(None, "--prompt-schedule",
                                             help="Prompt switches: lines SECONDS<TAB>PROMPT (a line at 0 may "
                                                  "replace PROMPT)."),
        quiet: QuietOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Generate a video from a text prompt (and optionally a starting picture)."""
        from cfcli.pipeline import generate as job
        from cfcli.pipeline.video import CODECS
        from cfcli.pipeline.engine import EngineOptions
        from cfcli.presets import load_preset

        schedule = read_schedule(prompt, prompt_at, prompt_schedule, prompt_file)
        prompts = [schedule.opening] if schedule else read_prompts(prompt, prompt_file)
        if codec not in CODECS:
            raise CfError(f"unknown codec {codec!r}", f"use one of: {', '.join(CODECS)}")
        p = load_preset(preset_name(preset, mode, steps))
        dev = pick_device(device)
        dt = pick_dtype(dtype, dev)
        options = EngineOptions(compile, cuda_graphs, quantize, decoder)
        options.check(dev)
        fps_ = fps or p.fps
        want = frames if frames is not None else (round(seconds * fps_) + 1 if seconds is not None else p.frames)
        if seconds is not None and seconds <= 0:
            raise CfError(f"--seconds must be positive, got {seconds}")
        real, _ = job.plan_frames(p, want, image is not None)
        if real != want and not quiet:
            console.print(f"[yellow]note:[/] {want} frames is not a length the model makes; generating {real}")
        starts = schedule.block_starts(fps_, real, p.block_frames) if schedule else ()  # refused before models load
        runs = []  # (prompt, seed, path), every output path checked before any model loads
        for i, text in enumerate(prompts):
            s = new_seed(seed)
            path = out or Path("outputs") / f"{slug(text)}-{s}.mp4"
            if out is not None and len(prompts) > 1:
                path = out.with_name(f"{out.stem}-{i:03d}{out.suffix}")
            check_out(path, overwrite)
            runs.append((text, s, path))
        from cfcli.pipeline.engine import latent_frames_for
        from cfcli.pipeline.memory import plan_run, text_placement

        options, plan = plan_run(p, latent_frames_for(real), dev, dt, options, max_vram, low_vram)
        show_plan(plan, quiet)
        # Every prompt is encoded in one umT5 load, which is gone before the DiT loads (once, for all prompts).
        encoder = job.PromptEncoder(p, dev, dt, placement=text_placement(options))
        encoder.encode(schedule.prompts() if schedule else prompts)
        engine = job.Engine.load(p, dev, dt).configure(options)
        for text, s, path in runs:
            if not quiet:
                console.print(f"[bold]{p.name}[/] · seed [cyan]{s}[/] · {real} frames → {path}")
                show_switches(schedule, starts, fps_, p)
            req = job.GenerateRequest(text, p, s, real, path, dev, dt, codec, crf, fps, image, save_latents,
                                      schedule)
            with ProgressView(enabled=not quiet, fps=fps_, device=dev) as view:
                summary = job.run(req, view.update, engine=engine, prompt_encoder=encoder)
            report(summary, quiet, json_out)
            if summary.interrupted:
                raise typer.Exit(130)


def read_prompts(prompt: str | None, prompt_file: Path | None) -> list[str]:
    if prompt_file is not None:
        try:
            lines = [ln.strip() for ln in prompt_file.read_text().splitlines()]
        except OSError as exc:
            raise CfError(f"cannot read --prompt-file {prompt_file}: {exc.strerror}") from exc
        prompts = [ln for ln in lines if ln]
        if not prompts:
            raise CfError(f"{prompt_file} holds no prompts", "write one prompt per line")
        return prompts
    if prompt is None or not prompt.strip():
        raise CfError("the prompt is empty", 'describe the video, e.g. cf generate "a fox running"')
    return [prompt]


def read_schedule(prompt: str | None, prompt_at: list[str] | None, schedule_file: Path | None,
                  prompt_file: Path | None):
    """The prompt schedule of `--prompt-at` pairs and `--prompt-schedule` lines together; None without switches."""
    from cfcli.pipeline.prompts import PromptSchedule, parse_prompt_at, read_schedule_file

    if not prompt_at and schedule_file is None:
        return None
    if prompt_file is not None:
        raise CfError("--prompt-file cannot be combined with --prompt-at/--prompt-schedule",
                      "a schedule tells one video's story; make the batch and the story in separate runs")
    switches = read_schedule_file(schedule_file) if schedule_file is not None else []
    pairs = [value.split("\t", 1) for value in prompt_at or ()]
    if any(len(pair) != 2 for pair in pairs):
        raise CfError("--prompt-at takes a time and a prompt", 'e.g. --prompt-at 12s "the fox jumps into the river"')
    switches += parse_prompt_at([(time, text) for time, text in pairs])
    return PromptSchedule.build(prompt, switches)


def show_switches(schedule, starts: tuple[int, ...], fps: float, preset) -> None:
    """Where each switch lands: at a block start; with the rolling sampler the blocks in its window change too."""
    from rich.markup import escape

    from cfcli.pipeline.prompts import video_frame

    in_flight = (len(preset.steps) - 1) * preset.block_frames if preset.sampler == "rolling" else 0
    for entry, start in zip(schedule.entries[1:] if schedule else (), starts[1:]):
        frame, touched = video_frame(start), video_frame(max(0, start - in_flight))
        rolling = f", blocks in flight from frame {touched} finish under it" if touched != frame else ""
        console.print(f"[dim]prompt switch at {entry.seconds:g}s → from frame {frame} ({frame / fps:.2f}s)"
                      f"{rolling}:[/] {escape(entry.prompt)}")


def report(s, quiet: bool, json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps({"path": str(s.path), "frames": s.frames, "fps": s.fps, "seconds": s.seconds,
                               "seed": s.seed, "preset": s.preset, "first_frame_s": s.first_frame_s,
                               "elapsed_s": s.elapsed, "generation_fps": s.generation_fps,
                               "interrupted": s.interrupted}))
    if quiet:
        return
    if s.interrupted:
        console.print(f"[yellow]stopped:[/] {s.frames} frames kept in {s.path}")
        return
    first = f"{s.first_frame_s:.2f}s" if s.first_frame_s is not None else "-"
    console.print(f"[green]✓[/] {s.path}  ·  {s.frames} frames, {s.seconds:.2f}s at {s.fps:g} fps  ·  "
                  f"first frame {first}  ·  {s.generation_fps:.1f} frames/s  ·  seed {s.seed}")
