"""What every command shares: the consoles, option parsing helpers, and the one place errors become messages."""

import functools
import sys
from typing import Annotated

import typer
from rich.console import Console

from cfcli.errors import explain

console = Console(stderr=True, highlight=False, soft_wrap=True)

# Options several commands share, declared once (`preset: PresetOpt = None`).
PresetOpt = Annotated[str | None, typer.Option("--preset", help="Preset name or path to a preset YAML file.")]
ModeOpt = Annotated[str | None, typer.Option("--mode", help="A shipped preset: framewise (the default), chunkwise, "
                                                             "longvideo or self-forcing.")]
ExtendModeOpt = Annotated[str | None, typer.Option("--mode", help="framewise | chunkwise (default: the clip's own "
                                                                   "preset, else framewise).")]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="4, 2 or 1 (frame-wise).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (random when omitted; printed).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")]
CodecOpt = Annotated[str | None, typer.Option("--codec", envvar="CF_CODEC", show_envvar=True,
                                              help="h264 | h265 | ffv1 (lossless, .mkv) | vp9 | av1 (.webm) | gif "
                                                   "(default: from --out's suffix, else h264).")]
CrfOpt = Annotated[int, typer.Option("--crf", envvar="CF_CRF", show_envvar=True,
                                     help="Quality for h264/h265/vp9/av1: lower is better (0-51).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", envvar="CF_DEVICE", show_envvar=True,
                                               help="cpu | cuda | cuda:N (default: cuda when available).")]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", envvar="CF_DTYPE", show_envvar=True,
                                              help="float32 | bfloat16 | float16 (default: bfloat16 on GPU, "
                                                   "float32 on CPU).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (for scripts).")]
CompileOpt = Annotated[bool | None, typer.Option(
    "--compile/--no-compile", show_default=False,
    help="CUDA: compile the DiT's blocks. Default: on where the engine stays loaded (cf serve, live, bench) and for "
         "videos past the KV-cache horizon; off for one clip inside it, where compiling costs a fresh process more "
         "than it saves.")]
GraphsOpt = Annotated[bool, typer.Option("--cuda-graphs/--no-cuda-graphs",
                                         help="CUDA: replay each block's DiT calls as one CUDA graph.")]
PlainOpt = Annotated[bool, typer.Option("--plain", help="Every speed lever off (compilation, CUDA graphs, split-KV "
                                                        "attention, fused GELU, the tuned VAE decoder): the "
                                                        "reference modules as written, for comparisons.")]
QuantizeOpt = Annotated[str | None, typer.Option("--quantize", metavar="fp8",
                                                 help="fp8: the DiT's linear layers in float8 (Ada/Hopper GPUs); "
                                                      "measured slower on an H100 at these sizes and moves pixels "
                                                      "slightly: for experiments.")]
MaxVramOpt = Annotated[float | None, typer.Option("--max-vram", metavar="GIB",
                                                help="Plan for this much GPU memory and hold to it (caps PyTorch's "
                                                     "allocator); default: what is free.")]
LowVramOpt = Annotated[bool, typer.Option("--low-vram", help="The smallest plan (8-bit DiT weights and KV cache): "
                                                             "8 GB cards; with --max-vram, fitted to it.")]
LoraOpt = Annotated[list[str] | None, typer.Option("--lora", metavar="FILE[:SCALE]",
                                                  help="Merge a LoRA into the DiT's weights (safetensors: a local "
                                                       "file, or a Hub file owner/repo/path.safetensors after `cf "
                                                       "download --lora`) at SCALE (default 1, negative allowed); "
                                                       "repeatable, they stack. docs/lora.md.")]
NoServerOpt = Annotated[bool, typer.Option("--no-server", envvar="CF_NO_SERVER", show_envvar=True,
                                            help="Run in this process even when a `cf serve` is running.")]
DecoderOpt = Annotated[str, typer.Option("--decoder", metavar="wan|taehv",
                                         help="wan: the full VAE. taehv: the tiny TAEHV decoder, ~1.3x faster end "
                                              "to end, softer detail (`cf download --decoder taehv`).")]


def fail(message: str, hint: str = "") -> None:
    console.print(f"[bold red]error:[/] {message}")
    if hint:
        console.print(f"[dim]→ {hint}[/]")
    raise typer.Exit(1)


def friendly(fn):
    """Turn CfError, CUDA out-of-memory and OS errors into a short message and exit code 1, without a traceback;
    a stop (Ctrl-C, SIGTERM, SIGHUP) exits 128 + the signal number."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as exc:  # a stop outside the writing loop (which keeps a partial and says so)
            from cfcli.pipeline.signals import exit_code

            console.print("[yellow]stopped[/]")
            raise typer.Exit(exit_code(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the last net: a message, never a traceback
            known = explain(exc)
            if known is None:
                raise
            fail(known.message, known.hint)

    return wrapper


def is_tty() -> bool:
    return sys.stderr.isatty()
