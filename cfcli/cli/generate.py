"""`cf generate`: text (or picture) to video, streamed to the file block by block."""

from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import typer
from typer.core import TyperCommand

from cfcli.cli.checks import check_open, check_posters, check_prompt_sources, codec_note
from cfcli.cli.common import (CodecOpt, CompileOpt, CrfOpt, DecoderOpt, DeviceOpt, DtypeOpt, GraphsOpt, JsonOpt,
                              LowVramOpt, MaxVramOpt, ModeOpt, OverwriteOpt, PlainOpt, PresetOpt, QuantizeOpt, QuietOpt,
                              SeedOpt, StepsOpt, console, friendly, report_stale, show_plan)
from cfcli.cli.files import open_file, write_poster
from cfcli.cli.progress import ProgressView, cpu_notice, status_line
from cfcli.cli.summary import report
from cfcli.errors import CfError
from cfcli.pipeline.limits import check_options


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
    @app.command("generate", cls=_GenerateCommand, short_help="Make a video from a prompt (and a picture).")
    @friendly
    def generate(
        ctx: typer.Context,
        prompt: str = typer.Argument(None, help="What the video shows."),
        preset: PresetOpt = None,
        mode: ModeOpt = None,
        steps: StepsOpt = None,
        frames: int = typer.Option(None, "--frames", help="Video frames (rounded up to what the model makes)."),
        seconds: float = typer.Option(None, "--seconds", help="Video length in seconds (instead of --frames)."),
        fps: int = typer.Option(None, "--fps", help="Playback frame rate (default: the preset's)."),
        height: int = typer.Option(None, "--height", help="Video height, a multiple of the model's token "
                                    "size, 16 for Wan2.1 (default: the preset's)."),
        width: int = typer.Option(None, "--width", help="Video width, a multiple of the model's token "
                                   "size, 16 for Wan2.1 (default: the preset's)."),
        seed: SeedOpt = None,
        count: int = typer.Option(1, "--count", "-n", help="Videos per prompt, each with its own seed (--seed S: "
                                                             "S, S+1, ...)."),
        image: Path = typer.Option(None, "--image", help="Start from this picture (frame-wise only)."),
        out: Path = typer.Option(None, "--out", "-o", help="Output file; its suffix picks the container (default "
                                                           "outputs/<prompt>-<seed>.mp4, .mkv for ffv1, .webm for "
                                                           "vp9/av1, .gif for gif)."),
        overwrite: OverwriteOpt = False,
        codec: CodecOpt = None,
        crf: CrfOpt = 18,
        device: DeviceOpt = None,
        dtype: DtypeOpt = None,
        compile: CompileOpt = True,
        cuda_graphs: GraphsOpt = True,
        quantize: QuantizeOpt = None,
        plain: PlainOpt = False,
        decoder: DecoderOpt = "wan",
        max_vram: MaxVramOpt = None,
        low_vram: LowVramOpt = False,
        save_latents: Path = typer.Option(None, "--save-latents", help="Also write the latents (safetensors)."),
        noise_frames: int = typer.Option(None, "--noise-frames", metavar="N",
                                         help="Make the video as the first --frames of a run of N frames (its "
                                              "noise and cache): how `cf info` remakes a live recording."),
        prompt_file: Path = typer.Option(None, "--prompt-file", help="One prompt per line; models load once."),
        prompt_at: list[str] = typer.Option(None, "--prompt-at", metavar="TIME PROMPT",
                                            help="Switch to PROMPT at TIME (12s, 12.5, 1:05); repeatable."),
        prompt_schedule: Path = typer.Option(None, "--prompt-schedule",
                                             help="Prompt switches: lines SECONDS<TAB>PROMPT (a line at 0 may "
                                                  "replace PROMPT)."),
        poster: bool = typer.Option(False, "--poster", help="Also write the first frame as <video>.jpg beside it."),
        open_: bool = typer.Option(False, "--open", help="Play the video when done (several: open their folder)."),
        quiet: QuietOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Generate a video from a text prompt (and optionally a starting picture).

        Examples:

        \b
          cf generate "a fox running through a snowy forest" --seconds 5
          cf generate "a red kite over the sea" --mode chunkwise --count 4 --open
          cf generate "waves at dusk" --image beach.jpg --codec h265 --poster
          cf generate "a fox" --seconds 20 --prompt-at 10s "the fox jumps in a river"
          cf generate "city at night" -o night.gif --frames 33
        """
        from cfcli.pipeline.phases import Phases

        phases = Phases()
        phases.mark("cli_ready")
        from cfcli.pipeline import containers
        from cfcli.pipeline.signals import exit_code, stop_on_signals, stopped_by
        from cfcli.session import Session, SpeedFlags

        check_options(frames, seconds, seed, fps, crf)
        check_prompt_sources(prompt, prompt_file)
        check_open(open_)
        pairs = prompt_at_pairs(prompt_at, prompt_schedule, prompt_file)
        prompts = read_prompts(prompt, prompt_file)
        session = Session(preset, mode=mode, steps=steps, device=device, dtype=dtype, height=height, width=width,
                          speed=SpeedFlags(compile, cuda_graphs, quantize, decoder, plain), max_vram=max_vram,
                          low_vram=low_vram, keep_text=False, status=status_line(quiet), phases=phases)
        # Planned once, before the models load: a bad --image, an empty prompt, a switch that never shows refused here.
        firsts = [session.generate_request(text, frames=frames, seconds=seconds, fps=fps, seed=0, image=image, out=out,
                                           codec=codec, crf=crf, prompt_at=pairs, prompt_schedule=prompt_schedule,
                                           noise_frames=noise_frames, overwrite=overwrite) for text in prompts]
        first = firsts[0]
        for note in (first.plan.rounding(), codec_note(ctx, first.codec)):
            if note and not quiet:
                console.print(f"[yellow]note:[/] {note}")
        suffix = containers.get(first.codec).suffix
        runs = plan_runs([r.plan.prompt for r in firsts], seed, count, out, suffix, save_latents)
        requests = [replace(firsts[i // count], seed=s, out=path, save_latents=latents)
                    for i, (_, s, path, latents) in enumerate(runs)]
        if poster:
            check_posters([(req.out, req.save_latents) for req in requests], overwrite)
        show_plan(session.plan_memory(first.plan.run_latent_frames), quiet)
        report_stale(req.out for req in requests)
        with stop_on_signals(), ExitStack() as reserved:
            # Every output is reserved (checked, locked, its temp file created) before any model loads.
            requests = [reserved.enter_context(session.reserve(req)) for req in requests]
            cpu_notice(session.device, device, quiet)  # once every check has passed
            phases.mark("prepared")  # torch imported, options checked, outputs reserved
            encode_all(session, requests, phases)
            for req in requests:
                summary = run_one(session, req, quiet, json_out, phases)
                if summary.interrupted or stopped_by():
                    raise typer.Exit(exit_code())
                if poster:
                    write_poster(summary.path)
        if open_:
            open_file(requests[0].out if len(requests) == 1 else requests[0].out.parent)


def encode_all(session, requests: list, phases) -> None:
    """Every prompt of the run encoded in one umT5 load, gone before the DiT loads; the requests' plans take them."""
    with phases.span("text"):
        features = session.encode([t for req in requests for t in req.plan.prompts()])
    phases.facts["text_cache_hit"] = not session.encoder.loaded_encoder
    for i, req in enumerate(requests):
        requests[i] = replace(req, plan=req.plan.with_features(features))


def run_one(session, req, quiet: bool, json_out: bool, phases):
    """One video of the run, with its progress view and summary."""
    p = req.preset
    session.engine  # noqa: B018 - loaded (and timed) before the video's clock starts
    if not quiet:
        console.print(f"[bold]{p.name}[/] · seed [cyan]{req.seed}[/] · {req.plan.frames} frames → {req.out}")
        show_switches(req.plan, p)
    phases.video()
    phases.mark("video_start")
    with ProgressView(enabled=not quiet, fps=req.plan.fps, device=req.device) as view:
        summary = session.run(req, timed_progress(view.update, phases))
    report(summary, quiet, json_out, phases.report(summary.frames))
    return summary


def plan_runs(prompts: list[str], seed: int | None, count: int, out: Path | None, suffix: str,
              save_latents: Path | None) -> list[tuple[str, int, Path, Path | None]]:
    """(prompt, seed, video path, latents path) of every video, `count` per prompt: a batch numbers
    `--out`/`--save-latents`, and default names that slug alike get `-2`, `-3`, … so no output of the run overwrites
    another."""
    from cfcli.cli.files import PathSet
    from cfcli.config import output_dir
    from cfcli.pipeline.outputs import slug
    from cfcli.session import new_seed

    if count < 1:
        raise CfError(f"--count must be at least 1, got {count}")
    jobs = [(text, seed + k if seed is not None else new_seed(None)) for text in prompts for k in range(count)]
    runs, taken = [], PathSet()
    next_n: dict[Path, int] = {}  # per name: every `-n` below it is taken already, so a search never starts over
    folder = output_dir() if out is None else None  # the config file read once, not per video
    for i, (text, s) in enumerate(jobs):
        path, latents = out or folder / f"{slug(text)}-{s}{suffix}", save_latents
        if len(jobs) > 1:
            path = path.with_name(f"{path.stem}-{i:03d}{path.suffix}") if out is not None else path
            latents = latents.with_name(f"{latents.stem}-{i:03d}{latents.suffix}") if latents is not None else None
        first, stem = path, path.stem
        if path in taken:
            n = next_n.get(first, 2)
            while (path := first.with_name(f"{stem}-{n}{first.suffix}")) in taken:
                n += 1
            next_n[first] = n + 1
        taken.add(path)
        if latents is not None:
            if latents in taken:
                raise CfError(f"--save-latents {latents} is also a video of this run",
                              "give the latents a file of their own, e.g. latents.safetensors")
            taken.add(latents)
        runs.append((text, s, path, latents))
    return runs


def read_prompts(prompt: str | None, prompt_file: Path | None) -> list[str]:
    if prompt_file is not None:
        from cfcli.pipeline.prompts import read_text_file

        text = read_text_file(prompt_file, "--prompt-file", "prompts, one per line")
        lines = [ln.strip() for ln in text.splitlines()]
        prompts = [ln for ln in lines if ln]
        if not prompts:
            raise CfError(f"{prompt_file} holds no prompts", "write one prompt per line")
        return prompts
    return [prompt]  # an empty one is refused by the plan


def prompt_at_pairs(prompt_at: list[str] | None, schedule_file: Path | None,
                    prompt_file: Path | None) -> list[tuple[str, str]]:
    """The `--prompt-at TIME PROMPT` values as (time, prompt) pairs; a schedule does not go with a batch."""
    if (prompt_at or schedule_file is not None) and prompt_file is not None:
        raise CfError("--prompt-file cannot be combined with --prompt-at/--prompt-schedule",
                      "a schedule tells one video's story; make the batch and the story in separate runs")
    pairs = [value.split("\t", 1) for value in prompt_at or ()]
    if any(len(pair) != 2 for pair in pairs):
        raise CfError("--prompt-at takes a time and a prompt", 'e.g. --prompt-at 12s "the fox jumps into the river"')
    return [(time, text) for time, text in pairs]


def show_switches(video, preset) -> None:
    """Where each switch lands: at a block start; with the rolling sampler the blocks in its window change too."""
    from rich.markup import escape

    from cfcli.pipeline.samplers import sampler_kind

    first_frame_of = preset.geometry.first_frame_of
    in_flight = sampler_kind(preset).in_flight_frames(preset)
    fps = video.fps
    for entry, start in zip(video.schedule.entries[1:], video.starts[1:]):
        frame, touched = first_frame_of(start), first_frame_of(max(0, start - in_flight))
        rolling = f", blocks in flight from frame {touched} finish under it" if touched != frame else ""
        console.print(f"[dim]prompt switch at {entry.seconds:g}s → from frame {frame} ({frame / fps:.2f}s)"
                      f"{rolling}{switch_rounding(entry.seconds, fps, frame, preset)}:[/] {escape(entry.prompt)}")


def switch_rounding(seconds: float, fps: float, frame: int, preset) -> str:
    """Why a switch lands before or after the time asked: it applies to whole latent frames, at block starts."""
    asked = round(seconds * fps)
    if frame < asked:
        return (f", earlier than asked: frame {asked} is made by the latent frame that starts at frame {frame} "
                f"(each latent frame makes {preset.geometry.time_stride} video frames)")
    if frame > asked:
        size = f"{preset.block_frames} latent frames" if preset.block_frames > 1 else "1 latent frame"
        return f", later than asked: a switch starts at the next block ({size}, frame {frame})"
    return ""


def timed_progress(update, phases):
    """The progress callback, also noting in `phases` when frames reach the file's encoder."""
    def on_progress(progress) -> None:
        phases.frame_written()
        update(progress)

    return on_progress
