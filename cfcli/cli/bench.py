"""`cf bench`: how fast generation runs on this machine, against real time and against the FLOP floor."""

import json
import math
from pathlib import Path

import typer

from cfcli.cli.common import (CompileOpt, DecoderOpt, DeviceOpt, DtypeOpt, GraphsOpt, JsonOpt, LoraOpt, LowVramOpt,
                              MaxVramOpt, ModeOpt, PlainOpt, PresetOpt, QuantizeOpt, StepsOpt, console, friendly,
                              is_tty)
from cfcli.cli.progress import record_bench
from cfcli.errors import CfError
from cfcli.pipeline.limits import check_length, check_options

def register(app: typer.Typer) -> None:
    @app.command("bench", short_help="Measure generation speed on this machine.")
    @friendly
    def bench(
        preset: PresetOpt = None,
        mode: ModeOpt = None,
        steps: StepsOpt = None,
        frames: int = typer.Option(None, "--frames", help="Video frames (default: the preset's; rounded up)."),
        height: int = typer.Option(None, "--height", help="Override the preset's height (a multiple of its "
                                    "token size, 16 for Wan2.1)."),
        width: int = typer.Option(None, "--width", help="Override the preset's width (a multiple of its "
                                   "token size, 16 for Wan2.1)."),
        random_weights: bool = typer.Option(False, "--random-weights",
                                            help="Random weights of the preset's size, even if the real ones are "
                                                 "cached (they are used anyway when not downloaded)."),
        repeat: int = typer.Option(3, "--repeat", help="Timed runs after the warm-up (medians are reported)."),
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
        save_latents: Path = typer.Option(None, "--save-latents",
                                          help="Write the latents of one more DiT-only run (to compare plans)."),
        peak_tflops: float = typer.Option(None, "--peak-tflops",
                                          help="Matmul rate for the FLOP floors (default on a GPU: 700, an "
                                               "assumed H100 bf16 rate; on the CPU no floors unless given)."),
        cold: bool = typer.Option(False, "--cold", help="Time fresh `cf generate` processes instead, phase by phase "
                                                        "(what a user waits for); the first on empty compile "
                                                        "caches. Needs the weights on disk."),
        served: bool = typer.Option(False, "--served", help="Time fresh `cf generate` clients whose jobs a warm "
                                                            "`cf serve` makes (the running one, else one started "
                                                            "for the bench). Needs the weights on disk."),
        json_out: JsonOpt = False,
    ) -> None:
        """Time warm generations: end-to-end and DiT-only FPS, first frame, block latency, memory, floors.

        Examples:

        \b
          cf bench
          cf bench --mode chunkwise --decoder taehv --json
          cf bench --device cpu --dtype bfloat16 --height 240 --width 416 --frames 5
          cf bench --cold --repeat 3 --frames 81
          cf bench --served --repeat 3
        """
        from cfcli.pipeline.plan import frame_counts
        from cfcli.presets import preset_name
        from cfcli.session import Session, SpeedFlags

        check_options(frames)
        if repeat < 1:
            raise CfError(f"--repeat must be at least 1, got {repeat}")
        if peak_tflops is not None and not (math.isfinite(peak_tflops) and peak_tflops > 0):
            raise CfError(f"--peak-tflops must be a positive number, got {peak_tflops}")
        # random_weights None: the cached weights when they are here, else random ones (TAEHV's too)
        session = Session(preset, mode=mode, steps=steps, device=device, dtype=dtype, height=height, width=width,
                          speed=SpeedFlags(compile, cuda_graphs, quantize, decoder, plain), max_vram=max_vram,
                          low_vram=low_vram, lora=lora, keep_text=False,
                          random_weights=True if random_weights else None)
        p, dev = session.preset, session.device
        want = frames if frames is not None else p.frames
        check_length(want, "--frames", geometry=p.geometry)
        real, _ = frame_counts(p, want, image=False)
        if real != want:
            console.print(f"[yellow]note:[/] {want} frames is not a length the model makes; benchmarking {real}")
        if cold and served:
            raise CfError("--cold and --served are two benches", "run one, then the other")
        if cold or served:
            from cfcli.cli.cold import bench_cold, bench_served, check_cold, generate_options

            check_cold(random_weights, not session.uses_random_weights, save_latents, "--cold" if cold else "--served")
            options = generate_options(preset_name(preset, mode, steps), real, height, width, device, dtype, compile,
                                       cuda_graphs, quantize, decoder, max_vram, low_vram, plain,
                                       [a.spec.arg for a in session.loras if not a.preset])
            return (bench_cold if cold else bench_served)(options, repeat, json_out)
        if not random_weights and session.uses_random_weights:
            console.print(f"[yellow]note:[/] {p.name} weights are not downloaded: using random weights of the same "
                          "size (same speed, meaningless pixels)")
        latent_frames = p.geometry.latent_frames_for(real)
        if is_tty() and not json_out:
            with console.status("benchmarking") as spinner:
                result = session.bench(latent_frames, repeat, peak_tflops, save_latents,
                                       lambda m: spinner.update(f"benchmarking: {m}"))
        else:
            result = session.bench(latent_frames, repeat, peak_tflops, save_latents)
        floors = dev.type == "cuda" or peak_tflops is not None
        data = with_floors(result.to_json(), floors)
        record_bench(data)
        if json_out:
            typer.echo(json.dumps(data))
        else:
            render(result, peak_tflops is None, floors=floors)


def with_floors(data: dict, floors: bool) -> dict:
    """The JSON as the table shows it: without floors (the CPU, no --peak-tflops) the rate and every floor are null,
    as the table reads n/a."""
    if floors:
        return data
    return {**data, "peak_tflops": None, "floor": {k: None for k in data["floor"]}}


def render(r, assumed_rate: bool, floors: bool = True) -> None:
    """The table for people: each measured number next to its FLOP floor and how close it comes.

    Without `floors` (the CPU, no --peak-tflops given) the floor columns read n/a: an H100's rate means nothing
    there."""
    from rich.table import Table

    weights = "cached weights" if r.weights == "cached" else "random weights (preset size)"
    blocks = f"{r.blocks} block{'s' if r.blocks != 1 else ''}"
    decoder = " · TAEHV decoder" if r.decoder == "taehv" else ""
    console.print(f"[bold]{r.preset}[/] · {r.frames} frames ({blocks}) at {r.width}×{r.height} · {r.dtype}{decoder} "
                  f"· {r.gpu} ({r.device}) · [cyan]{weights}[/]")
    f = r.floor
    table = Table(box=None, pad_edge=False)
    for col, justify in (("metric", "left"), ("measured", "right"), ("floor", "right"), ("of floor", "right")):
        table.add_column(col, justify=justify)
    rows = [("end-to-end (decoded)", r.fps_end_to_end, f["fps_end_to_end"], "{:.1f} fps", True),
            ("generation (DiT only)", r.fps_generation, f["fps_generation"], "{:.1f} fps", True),
            ("first decoded frame", r.first_frame_s, f["first_frame_s"], "{:.3f} s", False),
            ("block latency p50", r.block_ms_p50, f["block_ms_p50"], "{:.1f} ms", False),
            ("block latency p95", r.block_ms_p95, f["block_ms_p95"], "{:.1f} ms", False),
            (f"text encoding ({r.text_tokens} tokens)", r.text_encode_s, f["text_encode_s"], "{:.3f} s", False)]
    for name, value, floor, fmt, higher_better in rows:
        share = value / floor if higher_better else floor / value if value > 0 else 0.0
        unit = fmt.split()[-1]
        if not floors:
            table.add_row(name, fmt.format(value), "n/a", "n/a")
            continue
        table.add_row(name, fmt.format(value), f"{floor:.4g} {unit}", f"{100 * share:.0f}%")
    if r.text_load_s is not None:
        table.add_row("text encoder load", f"{r.text_load_s:.2f} s", "", "")
    if r.peak_vram_gib is not None:
        table.add_row("peak GPU memory", f"{r.peak_vram_gib:.2f} GiB", "", "")
        table.add_row("  text encoder phase", f"{r.text_peak_vram_gib:.2f} GiB", "", "")
        for phase, label in (("generation", "generation (DiT only)"), ("decode", "generation + decode")):
            if r.phase_peak_gib.get(phase) is not None:
                table.add_row(f"  {label}", f"{r.phase_peak_gib[phase]:.2f} GiB", "", "")
    console.print(table)
    rate = f"{r.peak_tflops:g} TFLOP/s" + (" (assumed; --peak-tflops)" if assumed_rate else "")
    rate = rate if floors else "n/a on the CPU (give --peak-tflops for this CPU's rate)"
    console.print(f"[dim]work: DiT {r.dit_tflop:.4g} + {'TAEHV' if r.decoder == 'taehv' else 'VAE'} decode "
                  f"{r.vae_decode_tflop:.4g} TFLOP per video; "
                  f"floors at {rate} · attention: {', '.join(r.attention) or 'none'} · {r.fast_path} "
                  f"(warm-up {r.warmup_s:.1f} s) · torch {r.torch} · median of {r.repeat}[/]")
    console.print(f"[dim]speed levers: {', '.join(r.levers) or 'none (the reference modules)'}[/]")
    if r.plan:
        console.print(f"[dim]memory plan: {r.plan}[/]")
    if not r.finite:
        console.print("[yellow]warning:[/] the latents were not finite (random weights overflowed?)")
    verdict = f"{r.realtime_factor:.1f}× real time ({r.target_fps} fps)"
    if r.realtime:
        console.print(f"[green]✓ {verdict}[/]")
    else:
        console.print(f"[red]✗ {verdict}: too slow for live playback[/]")
