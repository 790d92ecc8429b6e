"""`cf extend CLIP`: continue a clip (ours or any video PyAV decodes) past its last frame."""

from pathlib import Path

import typer

from cfcli.cli.common import (CodecOpt, CompileOpt, CrfOpt, DecoderOpt, DeviceOpt, DtypeOpt, GraphsOpt, JsonOpt,
                              LowVramOpt, MaxVramOpt, ModeOpt, OverwriteOpt, PresetOpt, QuantizeOpt, QuietOpt, SeedOpt,
                              StepsOpt, check_out, console, friendly, new_seed, pick_device, pick_dtype, preset_name,
                              show_plan)
from cfcli.cli.generate import report
from cfcli.cli.progress import ProgressView
from cfcli.errors import CfError


def register(app: typer.Typer) -> None:
    @app.command("extend")
    @friendly
    def extend(
        clip: Path = typer.Argument(..., help="The video to continue."),
        prompt: str = typer.Option(None, "--prompt", help="What happens next (default: the clip's own prompt)."),
        frames: int = typer.Option(None, "--frames", help="New video frames (4 per latent frame)."),
        seconds: float = typer.Option(None, "--seconds", help="New video length in seconds."),
        context_frames: int = typer.Option(None, "--context-frames",
                                           help="Clip frames used as context (1 + 4k; default 17 / 21)."),
        only_new: bool = typer.Option(False, "--only-new", help="Write only the continuation."),
        preset: PresetOpt = None,
        mode: ModeOpt = None,
        steps: StepsOpt = None,
        seed: SeedOpt = None,
        fps: int = typer.Option(None, "--fps", help="Playback frame rate (default: the clip's)."),
        out: Path = typer.Option(None, "--out", "-o", help="Output file (default <clip>-extended-<seed>.mp4)."),
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
        save_latents: Path = typer.Option(None, "--save-latents", help="Write context + new latents."),
        quiet: QuietOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Continue a video clip; the output is the clip followed by the new frames (or only the new ones)."""
        from cfcli.pipeline import extend as job
        from cfcli.pipeline.video import CODECS
        from cfcli.pipeline.engine import EngineOptions
        from cfcli.presets import load_preset

        if codec not in CODECS:
            raise CfError(f"unknown codec {codec!r}", f"use one of: {', '.join(CODECS)}")
        p = load_preset(preset_name(preset, mode, steps))
        if p.sampler != "causal":
            raise CfError(f"{p.name} cannot extend clips", "use --mode framewise or --mode chunkwise")
        dev = pick_device(device)
        dt = pick_dtype(dtype, dev)
        options = EngineOptions(compile, cuda_graphs, quantize, decoder)
        options.check(dev)
        if seconds is not None and seconds <= 0:
            raise CfError(f"--seconds must be positive, got {seconds}")
        new = frames if frames is not None or seconds is not None else 64
        s = new_seed(seed)
        path = out or clip.with_name(f"{clip.stem}-extended-{s}.mp4")
        check_out(path, overwrite)
        from cfcli.pipeline.memory import plan_run

        # Planned for the longest default context and the new frames (the cache holds at most the horizon anyway).
        new_latents = -(-(new or round(seconds * (fps or p.fps))) // 4)
        options, plan = plan_run(p, new_latents + max(job.DEFAULT_CONTEXT_LATENTS.values()), dev, dt, options,
                                 max_vram, low_vram)
        show_plan(plan, quiet)
        if not quiet:
            console.print(f"[bold]{p.name}[/] · seed [cyan]{s}[/] · {clip} + {new or f'{seconds}s'} frames → {path}")
        req = job.ExtendRequest(clip, prompt, p, s, new, path, dev, dt, context_frames, only_new, codec, crf, fps,
                                save_latents, seconds, options)
        note = (lambda m: None) if quiet else (lambda m: console.print(f"[yellow]note:[/] {m}"))
        with ProgressView(enabled=not quiet, fps=fps or p.fps, device=dev) as view:
            summary = job.run(req, view.update, note=note)
        report(summary, quiet, json_out)
        if summary.interrupted:
            raise typer.Exit(130)
