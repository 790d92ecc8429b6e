"""`cf generate`: text (or picture) to video, streamed to the file block by block — here, or on a running `cf serve`
(the job: `cfcli.jobs.generate`)."""

from pathlib import Path

import typer
from typer.core import TyperCommand

from cfcli.cli.checks import check_open, given
from cfcli.cli.common import (CodecOpt, CompileOpt, CrfOpt, DecoderOpt, DeviceOpt, DtypeOpt, GraphsOpt, JsonOpt,
                              LoraOpt, LowVramOpt, MaxVramOpt, ModeOpt, NoServerOpt, OverwriteOpt, PlainOpt,
                              PresetOpt, QuantizeOpt, QuietOpt, SeedOpt, StepsOpt, friendly)
from cfcli.cli.files import open_file
from cfcli.cli.jobs import given_engine, run_job


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
        compile: CompileOpt = None,
        cuda_graphs: GraphsOpt = True,
        quantize: QuantizeOpt = None,
        plain: PlainOpt = False,
        decoder: DecoderOpt = "wan",
        max_vram: MaxVramOpt = None,
        low_vram: LowVramOpt = False,
        lora: LoraOpt = None,
        save_latents: Path = typer.Option(None, "--save-latents", help="Also write the latents (safetensors)."),
        noise_frames: int = typer.Option(None, "--noise-frames", metavar="N",
                                         help="Make the video as the first --frames of a run of N frames (its "
                                              "noise and cache): how `cf info` remakes a live recording."),
        prompt_file: Path = typer.Option(None, "--prompt-file", help="One prompt per line; models load once."),
        prompt_at: list[str] = typer.Option(None, "--prompt-at", metavar="TIME PROMPT",
                                            help="Switch to PROMPT at TIME (12s, 12.5, 1:05); TIME~N[:slerp] "
                                                 "blends into it over N blocks; TIME@K switches before denoising "
                                                 "step K of the block at TIME; repeatable."),
        prompt_schedule: Path = typer.Option(None, "--prompt-schedule",
                                             help="Prompt switches: lines SECONDS<TAB>PROMPT (a line at 0 may "
                                                  "replace PROMPT)."),
        poster: bool = typer.Option(False, "--poster", help="Also write the first frame as <video>.jpg beside it."),
        open_: bool = typer.Option(False, "--open", help="Play the video when done (several: open their folder)."),
        quiet: QuietOpt = False,
        json_out: JsonOpt = False,
        no_server: NoServerOpt = False,
    ) -> None:
        """Generate a video from a text prompt (and optionally a starting picture).

        Examples:

        \b
          cf generate "a fox running through a snowy forest" --seconds 5
          cf generate "a red kite over the sea" --mode chunkwise --count 4 --open
          cf generate "waves at dusk" --image beach.jpg --codec h265 --poster
          cf generate "a fox" --seconds 20 --prompt-at 10s "the fox jumps in a river"
          cf generate "city at night" -o night.gif --frames 33
          cf generate "a fox in ink" --lora ink-style.safetensors:0.8
        """
        from cfcli.jobs.generate import GenerateJob

        check_open(open_)
        job = GenerateJob(prompt, given_engine(ctx), frames, seconds, fps, seed, count, image, out, overwrite, codec,
                          crf, given(ctx, "crf"), save_latents, noise_frames, prompt_file,
                          [value.split("\t", 1) for value in prompt_at or ()], prompt_schedule, poster)
        view = run_job("generate", job, quiet, json_out, no_server)
        if open_:
            open_file(Path(view.paths[0]) if len(view.paths) == 1 else Path(view.paths[0]).parent)


