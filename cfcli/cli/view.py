"""The terminal's `View` of a job (`cfcli.jobs.view`): lines on stderr, the progress bar, the summary line or its
JSON on stdout. A job in this process reports to it directly; a job on `cf serve` through the client, call for call."""

import json

import typer

from cfcli.cli.common import console
from cfcli.cli.progress import ProgressView


class ConsoleView:
    def __init__(self, quiet: bool = False, json_out: bool = False, server: str | None = None,
                 stopped=lambda: 0):
        self.quiet, self.json_out, self.server = quiet, json_out, server
        self.stopped = stopped  # the signal that stopped the job, 0 for none
        self.paths: list[str] = []  # each finished video's, for --open
        self._bar: ProgressView | None = None

    def line(self, markup: str) -> None:
        console.print(markup)

    def progress_start(self, fps: float) -> None:
        self._bar = ProgressView(enabled=not self.quiet, fps=fps).__enter__()

    def progress(self, made: int, goal: int, elapsed: float, mem_gib: float | None) -> None:
        if self._bar is not None:
            self._bar.update(made, goal, elapsed, mem_gib)

    def progress_end(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        self._bar = None

    def summary(self, fields: dict, phases: dict | None = None) -> None:
        self.paths.append(fields["path"])
        report(fields, self.quiet, self.json_out, phases, self.server)


def report(s: dict, quiet: bool, json_out: bool, phases: dict | None = None, server: str | None = None) -> None:
    """The closing line of a video (`cfcli.jobs.view.summary_fields`), as text or JSON; `server`: the `cf serve` that
    made it (None: this process)."""
    if json_out:
        shown = {k: v for k, v in s.items() if k != "left_untouched"} | {"server": server}
        typer.echo(json.dumps(shown | ({"phases": phases} if phases else {})))
    if quiet:
        return
    if s["interrupted"]:
        untouched = s.get("left_untouched")
        beside = f" ({untouched} was left as it was)" if untouched else ""
        console.print(f"[yellow]stopped:[/] {s['frames']} frames kept in {s['path']}{beside}" if s["frames"] else
                      f"[yellow]stopped[/] before the first frame: nothing was written to {s['path']}")
        return
    first = f"{s['first_frame_s']:.2f}s" if s["first_frame_s"] is not None else "-"
    new = f" ({s['generated_frames']} new)" if s["generated_frames"] != s["frames"] else ""
    console.print(f"[green]✓[/] {s['path']}  ·  {s['frames']} frames{new}, {s['seconds']:.2f}s at {s['fps']:g} fps  ·  "
                  f"first frame {first}  ·  generated {s['generation_fps']:.1f} frames/s "
                  f"({s['generation_fps'] / s['fps']:.2f}× real time)  ·  seed {s['seed']}")
