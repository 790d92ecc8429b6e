"""`cf extend CLIP`: continue a clip (ours or any video PyAV decodes) past its last frame."""

from pathlib import Path

import typer

from cfcli.cli.checks import check_length, check_open, check_options, check_posters, codec_note
from cfcli.cli.common import (CodecOpt, CompileOpt, CrfOpt, DecoderOpt, DeviceOpt, DtypeOpt, ExtendModeOpt, GraphsOpt,
                              JsonOpt, LowVramOpt, MaxVramOpt, OverwriteOpt, PlainOpt, PresetOpt, QuantizeOpt, QuietOpt,
                              SeedOpt, StepsOpt, console, friendly, new_seed, set_up, show_plan)
from cfcli.cli.files import open_file, output_codec, write_poster
from cfcli.cli.progress import ProgressView, cpu_notice, status_line
from cfcli.cli.summary import report
from cfcli.errors import CfError


def register(app: typer.Typer) -> None:
    @app.command("extend", short_help="Continue a video clip past its last frame.")
    @friendly
    def extend(
        ctx: typer.Context,
        clip: Path = typer.Argument(..., help="The video to continue."),
        prompt: str = typer.Option(None, "--prompt", help="What happens next (default: the clip's own prompt)."),
        frames: int = typer.Option(None, "--frames", help="New video frames (per latent frame: 4 for Wan2.1)."),
        seconds: float = typer.Option(None, "--seconds", help="New video length in seconds."),
        context_frames: int = typer.Option(None, "--context-frames",
                                           help="Clip frames used as context (1 + sk, s the VAE's time stride: "
                                                "4 for Wan2.1; default 17 / 21)."),
        only_new: bool = typer.Option(False, "--only-new", help="Write only the continuation."),
        preset: PresetOpt = None,
        mode: ExtendModeOpt = None,
        steps: StepsOpt = None,
        seed: SeedOpt = None,
        fps: int = typer.Option(None, "--fps", help="Playback frame rate (default: the clip's)."),
        out: Path = typer.Option(None, "--out", "-o", help="Output file (default <clip>-extended-<seed>.mp4; "
                                                           "the codec's container, e.g. .mkv for ffv1)."),
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
        save_latents: Path = typer.Option(None, "--save-latents", help="Write context + new latents."),
        poster: bool = typer.Option(False, "--poster", help="Also write the first frame as <video>.jpg beside it."),
        open_: bool = typer.Option(False, "--open", help="Play the video when done."),
        quiet: QuietOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Continue a video clip; the output is the clip followed by the new frames (or only the new ones).

        Examples:

        \b
          cf extend fox.mp4 --seconds 4
          cf extend fox.mp4 --prompt "the fox jumps into the river" --frames 32
          cf extend holiday.mov --prompt "the waves roll in" --only-new --codec ffv1
        """
        from cfcli.pipeline import extend as job
        from cfcli.pipeline.samplers import sampler_kind
        from cfcli.pipeline.signals import exit_code, stop_on_signals

        check_options(frames, seconds, seed, fps, crf)
        check_open(open_)
        fmt = output_codec(codec, out)
        setup = set_up(preset, mode, steps, device, dtype, (compile, cuda_graphs, quantize, decoder, plain))
        p, dev, dt = setup.preset, setup.device, setup.dtype
        if frames is not None:
            check_length(frames, "--frames", geometry=p.geometry)
        if not sampler_kind(p).starts_from_frames:
            raise CfError(f"{p.name} cannot extend clips", "use --mode framewise or --mode chunkwise")
        # Planned once, before the models load: the clip probed, its prompt, the context and the new frames.
        video = job.plan_extend(p, clip, prompt, frames, seconds, fps, context_frames, only_new)
        s = new_seed(seed)
        path = out or clip.with_name(f"{clip.stem}-extended-{s}{fmt.suffix}")
        if poster:
            check_posters([(path, save_latents)], overwrite, inputs=(clip,))
        from cfcli.pipeline.memory import plan_run

        options, plan = plan_run(p, video.latent_frames, dev, dt, setup.options, max_vram, low_vram)
        show_plan(plan, quiet)
        for line in (*video.notes, codec_note(ctx, fmt.name)):
            if line and not quiet:
                console.print(f"[yellow]note:[/] {line}")
        with stop_on_signals():
            # Reserved (checked, locked, temp file created) before any model loads.
            with job.reserve_outputs(path, save_latents, overwrite, fmt.name, crf, p, inputs=(clip,)) as outputs:
                cpu_notice(dev, device, quiet)  # once every check has passed
                if not quiet:
                    console.print(f"[bold]{p.name}[/] · seed [cyan]{s}[/] · {clip} + {video.new_frames} frames "
                                  f"→ {path}")
                req = job.ExtendRequest(video, s, path, dev, dt, fmt.name, crf, save_latents, options, overwrite,
                                        outputs)
                with ProgressView(enabled=not quiet, fps=video.fps, device=dev) as view:
                    summary = job.run(req, view.update, status=status_line(quiet))
            report(summary, quiet, json_out)
            if summary.interrupted:
                raise typer.Exit(exit_code())
        if poster:
            write_poster(summary.path)
        if open_:
            open_file(summary.path)

