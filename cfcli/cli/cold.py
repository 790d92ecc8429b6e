"""`cf bench --cold` and `--served`: the options handed to each fresh `cf generate` (and `cf serve`), and the tables
of what they took."""

import json
from collections.abc import Sequence

import typer

from cfcli.cli.common import console, is_tty
from cfcli.errors import CfError

COLUMNS = (("start-up", "startup_s"), ("prepare", "prepare_s"), ("text", "text_s"), ("load", "load_s"),
           ("configure", "configure_s"), ("first block", "first_block_s"), ("generation", "generation_s"),
           ("tail", "tail_s"), ("first frame", "first_frame_s"), ("done", "total_s"), ("wall", "wall_s"))


def generate_options(preset: str, frames: int, height: int | None, width: int | None, device: str | None,
                     dtype: str | None, compile: bool | None, graphs: bool, quantize: str | None, decoder: str,
                     max_vram: float | None, low_vram: bool, plain: bool = False,
                     lora: Sequence[str] = ()) -> list[str]:
    """The bench's options as `cf generate` options (those left at their defaults are left out; `lora`: `--lora`
    values)."""
    pairs = [("--preset", preset), ("--frames", frames), ("--height", height), ("--width", width),
             ("--device", device), ("--dtype", dtype), ("--quantize", quantize), ("--decoder", decoder),
             ("--max-vram", max_vram)]
    out = [str(x) for name, value in pairs if value is not None for x in (name, value)]
    out += {True: ["--compile"], False: ["--no-compile"], None: []}[compile]
    out += [] if graphs else ["--no-cuda-graphs"]
    out += [x for spec in lora for x in ("--lora", spec)]
    return out + (["--low-vram"] if low_vram else []) + (["--plain"] if plain else [])


def serve_options(generate: list[str]) -> list[str]:
    """The `cf generate` options of `generate_options` that `cf serve` takes (all but --frames)."""
    i = generate.index("--frames")
    return generate[:i] + generate[i + 2:]


def check_cold(random_weights: bool, weights_cached: bool, save_latents, flag: str = "--cold") -> None:
    """--cold and --served run `cf generate`, which needs the weights on disk and makes no bench latents."""
    if random_weights or not weights_cached:
        raise CfError(f"{flag} runs cf generate, which needs the preset's weights on this machine",
                      "cf download the preset first, or give --preset a YAML file whose weights are local files")
    if save_latents is not None:
        raise CfError(f"--save-latents does not apply to {flag}", "leave it out, or run the warm bench")


def bench_cold(options: list[str], repeat: int, json_out: bool) -> None:
    from cfcli.pipeline import cold

    if is_tty() and not json_out:
        with console.status("cold runs") as spinner:
            result = cold.run(options, repeat, lambda m: spinner.update(f"cold runs: {m}"))
    else:
        result = cold.run(options, repeat)
    if json_out:
        typer.echo(json.dumps(result.to_json()))
    else:
        render(result)


def render(result) -> None:
    """A column per fresh process and the median of the warm ones; a row per phase, in seconds."""
    from rich.table import Table

    rows = [r.to_json() for r in result.runs]
    warm = result.warm_median()
    table = Table(box=None, pad_edge=False)
    table.add_column("phase (s)")
    for r in result.runs:
        table.add_column(f"run {r.run}", justify="right")
    if warm:
        table.add_column("median 2+", justify="right", style="bold")
    table.add_row("compile caches", *(r["compile_cache"] for r in rows), *(["warm"] if warm else []))
    table.add_row("prompt", *("cached" if r.get("text_cache_hit") else "encoded" for r in rows),
                  *(["cached"] if warm else []))
    for name, key in COLUMNS:
        table.add_row(name, *(cell(r, key) for r in rows), *([cell(warm, key)] if warm else []))
    for model in rows[0].get("loads", {}):
        table.add_row(f"{model} read MB/s", *(rate(r, model) for r in rows), *([""] if warm else []))
    table.add_row("frames/s seen", *(f"{r['fps_seen']:.2f}" for r in rows), *([f"{warm['fps_seen']:.2f}"] if warm
                                                                              else []))
    console.print(f"[bold]cf bench --cold[/] · {len(rows)} fresh processes of [dim]cf generate "
                  f"{' '.join(result.args)}[/]")
    console.print(table)
    console.print("[dim]start-up: process start to arguments parsed · prepare: torch import, checks, outputs "
                  "reserved · first block: includes compilation and graph capture · tail: encoder flush, close, "
                  "rename · first frame, done: from the process start · wall: until the process is gone · frames/s seen: "
                  "frames over the wall time[/]")


def cell(row: dict, key: str) -> str:
    return f"{row[key]:.2f}" if row.get(key) is not None else "-"


def rate(row: dict, model: str) -> str:
    mb_s = row.get("loads", {}).get(model, {}).get("mb_s")
    return f"{mb_s:.0f}" if mb_s is not None else "-"


def bench_served(options: list[str], repeat: int, json_out: bool) -> None:
    from cfcli.serve import bench

    if is_tty() and not json_out:
        with console.status("served runs") as spinner:
            result = bench.run_served(options, serve_options(options), repeat,
                                      lambda m: spinner.update(f"served runs: {m}"))
    else:
        result = bench.run_served(options, serve_options(options), repeat)
    data = result.to_json()
    if json_out:
        typer.echo(json.dumps(data))
        return
    started = (f"a cf serve started for it ({data['server_start_s']:.1f}s to load and warm up)"
               if data["server_start_s"] is not None else "the running cf serve")
    console.print(f"[bold]cf bench --served[/] · {len(data['runs'])} fresh clients of [dim]cf generate "
                  f"{' '.join(result.args)}[/] · {started}")
    for r in data["runs"]:
        first = f"{r['first_frame_s']:.2f}s" if r["first_frame_s"] is not None else "-"
        gen = f"{r['generation_fps']:.1f}" if r["generation_fps"] else "-"
        console.print(f"  run {r['run']}: wall {r['wall_s']:.2f}s · first frame {first} · generation {gen} fps · "
                      f"{r['fps_seen']:.2f} frames/s seen")
