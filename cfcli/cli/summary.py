"""The closing line of a run, shared by `cf generate` and `cf extend`: the written video, its length and speed, as
text or JSON."""

import json

import typer

from cfcli.cli.common import console


def report(s, quiet: bool, json_out: bool, phases: dict | None = None) -> None:
    if json_out:
        typer.echo(json.dumps({"path": str(s.path), "frames": s.frames, "fps": s.fps, "seconds": s.seconds,
                               "seed": s.seed, "preset": s.preset, "first_frame_s": s.first_frame_s,
                               "elapsed_s": s.elapsed, "generated_frames": s.generated,
                               "generation_fps": s.generation_fps,
                               "interrupted": s.interrupted} | ({"phases": phases} if phases else {})))
    if quiet:
        return
    if s.interrupted:
        untouched = s.extra.get("left_untouched")
        beside = f" ({untouched} was left as it was)" if untouched else ""
        console.print(f"[yellow]stopped:[/] {s.frames} frames kept in {s.path}{beside}" if s.frames else
                      f"[yellow]stopped[/] before the first frame: nothing was written to {s.path}")
        return
    first = f"{s.first_frame_s:.2f}s" if s.first_frame_s is not None else "-"
    new = f" ({s.generated} new)" if s.generated != s.frames else ""
    console.print(f"[green]✓[/] {s.path}  ·  {s.frames} frames{new}, {s.seconds:.2f}s at {s.fps:g} fps  ·  "
                  f"first frame {first}  ·  generated {s.generation_fps:.1f} frames/s "
                  f"({s.generation_fps / s.fps:.2f}× real time)  ·  seed {s.seed}")
