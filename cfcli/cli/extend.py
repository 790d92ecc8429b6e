"""`cf extend CLIP`: continue a clip (ours or any video PyAV decodes) past its last frame."""

from pathlib import Path

import typer

from cfcli.cli.checks import check_open, check_posters, codec_note
from cfcli.cli.common import (CodecOpt, CompileOpt, CrfOpt, DecoderOpt, DeviceOpt, DtypeOpt, ExtendModeOpt, GraphsOpt,
                              JsonOpt, LowVramOpt, MaxVramOpt, OverwriteOpt, PlainOpt, PresetOpt, QuantizeOpt, QuietOpt,
                              SeedOpt, StepsOpt, console, friendly, report_stale, show_plan)
from cfcli.cli.clip_preset import extend_preset
from cfcli.cli.files import open_file, write_poster
from cfcli.cli.progress import ProgressView, cpu_notice, status_line
from cfcli.cli.summary import report
from cfcli.pipeline.limits import check_options

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
        from cfcli.pipeline.signals import exit_code, stop_on_signals
        from cfcli.session import Session, SpeedFlags

        check_options(frames, seconds, seed, fps, crf)
        check_open(open_)
        preset = extend_preset(clip, preset, mode, steps, quiet)  # the clip's own when nothing names one
        session = Session(preset, mode=mode, steps=steps, device=device, dtype=dtype,
                          speed=SpeedFlags(compile, cuda_graphs, quantize, decoder, plain), max_vram=max_vram,
                          low_vram=low_vram, keep_text=False, status=status_line(quiet))
        # Planned once, before the models load: the clip probed, its prompt, the context and the new frames.
        req = session.extend_request(clip, prompt=prompt, frames=frames, seconds=seconds, fps=fps,
                                     context_frames=context_frames, only_new=only_new, seed=seed, out=out,
                                     overwrite=overwrite, codec=codec, crf=crf, save_latents=save_latents)
        if poster:
            check_posters([(req.out, req.save_latents)], overwrite, inputs=(req.clip,))
        show_plan(session.plan_memory(req.plan.run_latent_frames), quiet)
        for line in (*req.plan.notes, codec_note(ctx, req.codec)):
            if line and not quiet:
                console.print(f"[yellow]note:[/] {line}")
        report_stale([req.out])
        with stop_on_signals():
            with session.reserve(req) as req:  # checked, locked, temp files made before any model loads
                cpu_notice(session.device, device, quiet)  # once every check has passed
                if not quiet:
                    console.print(f"[bold]{req.preset.name}[/] · seed [cyan]{req.seed}[/] · {clip} + "
                                  f"{req.plan.new_frames} frames → {req.out}")
                with ProgressView(enabled=not quiet, fps=req.plan.fps, device=session.device) as view:
                    summary = session.run(req, view.update)
            report(summary, quiet, json_out)
            if summary.interrupted:
                raise typer.Exit(exit_code())
        if poster:
            write_poster(summary.path)
        if open_:
            open_file(summary.path)
