"""`cf extend CLIP`: continue a clip (ours or any video PyAV decodes) past its last frame — here, or on a running
`cf serve` (the job: `cfcli.jobs.extend`)."""

from pathlib import Path

import typer

from cfcli.cli.checks import check_open, given
from cfcli.cli.common import (CodecOpt, CompileOpt, CrfOpt, DecoderOpt, DeviceOpt, DtypeOpt, ExtendModeOpt, GraphsOpt,
                              JsonOpt, LoraOpt, LowVramOpt, MaxVramOpt, NoServerOpt, OverwriteOpt, PlainOpt, PresetOpt,
                              QuantizeOpt, QuietOpt, SeedOpt, StepsOpt, friendly)
from cfcli.cli.files import open_file
from cfcli.cli.jobs import given_engine, run_job

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
        compile: CompileOpt = None,
        cuda_graphs: GraphsOpt = True,
        quantize: QuantizeOpt = None,
        plain: PlainOpt = False,
        decoder: DecoderOpt = "wan",
        max_vram: MaxVramOpt = None,
        low_vram: LowVramOpt = False,
        lora: LoraOpt = None,
        save_latents: Path = typer.Option(None, "--save-latents", help="Write context + new latents."),
        poster: bool = typer.Option(False, "--poster", help="Also write the first frame as <video>.jpg beside it."),
        open_: bool = typer.Option(False, "--open", help="Play the video when done."),
        quiet: QuietOpt = False,
        json_out: JsonOpt = False,
        no_server: NoServerOpt = False,
    ) -> None:
        """Continue a video clip; the output is the clip followed by the new frames (or only the new ones).

        Examples:

        \b
          cf extend fox.mp4 --seconds 4
          cf extend fox.mp4 --prompt "the fox jumps into the river" --frames 32
          cf extend holiday.mov --prompt "the waves roll in" --only-new --codec ffv1
        """
        from cfcli.jobs.extend import ExtendJob

        check_open(open_)
        job = ExtendJob(clip, given_engine(ctx), prompt, frames, seconds, context_frames, only_new, seed, fps, out,
                        overwrite, codec, crf, given(ctx, "crf"), save_latents, poster)
        view = run_job("extend", job, quiet, json_out, no_server)
        if open_:
            open_file(Path(view.paths[0]))
