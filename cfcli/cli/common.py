"""What every command shares: the consoles, option parsing helpers, and the one place errors become messages."""

import functools
import random
import sys
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console

from cfcli.errors import CfError

console = Console(stderr=True, highlight=False, soft_wrap=True)

# Options several commands share, declared once (`preset: PresetOpt = None`).
PresetOpt = Annotated[str | None, typer.Option("--preset", help="Preset name or path to a preset YAML file.")]
ModeOpt = Annotated[str | None, typer.Option("--mode", help="A shipped preset: framewise (the default), chunkwise, "
                                                             "longvideo or self-forcing.")]
ExtendModeOpt = Annotated[str | None, typer.Option("--mode", help="framewise | chunkwise (default framewise).")]
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
CompileOpt = Annotated[bool, typer.Option("--compile/--no-compile",
                                          help="CUDA: compile the DiT's blocks (the first run spends ~15 s compiling; "
                                               "PyTorch caches the result).")]
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
DecoderOpt = Annotated[str, typer.Option("--decoder", metavar="wan|taehv",
                                         help="wan: the full VAE. taehv: the tiny TAEHV decoder, ~1.3x faster end "
                                              "to end, softer detail (`cf download --decoder taehv`).")]
DTYPES = ("float32", "bfloat16", "float16")


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
        except CfError as exc:
            fail(exc.message, exc.hint)
        except KeyboardInterrupt as exc:  # a stop outside the writing loop (which keeps a partial and says so)
            from cfcli.pipeline.signals import exit_code

            console.print("[yellow]stopped[/]")
            raise typer.Exit(exit_code(exc)) from None
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ == "OutOfMemoryError":
                fail("the GPU ran out of memory",
                     "lower --frames or the resolution (a smaller preset), use --dtype bfloat16, or close other "
                     "programs using the GPU")
            if isinstance(exc, OSError) and exc.strerror:  # the last net: a message, never a traceback
                fail(f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else ""),
                     "check the path and its permissions")
            raise

    return wrapper


@dataclass(frozen=True)
class Setup:
    """What every model command starts from: the preset (at the asked size), device, dtype and engine options."""

    preset: object  # cfcli.presets.Preset
    device: object  # torch.device
    dtype: object  # torch.dtype
    options: object  # cfcli.pipeline.engine.EngineOptions


def set_up(preset: str | None, mode: str | None, steps: int | None, device: str | None, dtype: str | None,
           speed: tuple, height: int | None = None, width: int | None = None, need_weights: bool = True) -> Setup:
    """The one set-up of generate, extend, live and bench; `speed` is (compile, graphs, quantize, decoder, plain).
    Everything is checked here, before any model loads; `need_weights`: TAEHV's weights must be downloaded."""
    from cfcli.pipeline.plan import with_resolution
    from cfcli.presets import load_preset

    p = with_resolution(load_preset(preset_name(preset, mode, steps)), height, width)
    dev = pick_device(device)
    options = engine_options(*speed)
    options.check(dev, need_weights)
    return Setup(p, dev, pick_dtype(dtype, dev), options)


def engine_options(compile: bool, graphs: bool, quantize: str | None, decoder: str, plain: bool = False):
    """The `EngineOptions` of a command's speed flags. The tuned VAE decoder rides on --compile / --cuda-graphs (and
    its fused kernels on --compile), as before it was a lever of its own; --plain turns every lever off and refuses
    the ones asked for by name."""
    from cfcli.pipeline.engine import EngineOptions

    if not plain:
        return EngineOptions(compile, graphs, quantize, decoder, tuned_vae=compile or graphs, fused_vae=compile)
    if quantize is not None or decoder != "wan":
        raise CfError("--plain runs the reference modules: no --quantize, no --decoder taehv",
                      "leave out --plain, or those options")
    return EngineOptions.plain()


def pick_device(device: str | None):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise CfError(f"unknown device {device!r}", "use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):  # mps, xpu, …: the models and kernels are written for CUDA and the CPU
        raise CfError(f"--device {device} is not supported: cf runs on a CUDA GPU or the CPU",
                      "use --device cpu (slow), or a machine with a CUDA GPU")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CfError("CUDA is not available on this machine",
                      "use --device cpu (slow) or install a CUDA build of torch")
    return dev


def pick_dtype(dtype: str | None, device):
    import torch

    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise CfError(f"unknown dtype {dtype!r}", f"use one of: {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def new_seed(seed: int | None) -> int:
    return seed if seed is not None else random.SystemRandom().randrange(2**31)


def preset_name(preset: str | None, mode: str | None, steps: int | None) -> str:
    """--preset wins; else --mode/--steps pick a shipped preset; else CF_PRESET, the config file, framewise."""
    if preset is None and mode is None and steps is None:
        from cfcli.config import read_config, setting

        preset = setting("preset", read_config())
    if preset is not None:
        if mode is not None or steps is not None:
            raise CfError("--preset cannot be combined with --mode/--steps", "use one or the other")
        return preset
    mode = mode or "framewise"
    if mode not in ("framewise", "chunkwise", "longvideo", "self-forcing"):
        raise CfError(f"unknown mode {mode!r}", "use framewise, chunkwise, longvideo or self-forcing")
    if steps in (None, 4):
        return mode
    if mode != "framewise" or steps not in (1, 2):
        raise CfError(f"no {steps}-step {mode} model", "frame-wise has 4, 2 and 1 steps; chunk-wise 4")
    return f"framewise-{steps}step"


def is_tty() -> bool:
    return sys.stderr.isatty()


def show_plan(plan, quiet: bool = False) -> None:
    """Say which memory plan a GPU run uses (`cfcli.pipeline.memory`)."""
    if plan is not None and not quiet:
        console.print(f"[dim]memory plan: {plan.describe()}[/]")
