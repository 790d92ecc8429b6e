"""Live progress for generation: generated frames / total, speed against real time, ETA, GPU memory.

Only frames the model makes count (the copied frames of `cf extend` are written first and are not "made"). On a
terminal a Rich bar, started at the first finished frame so its total is always known; otherwise (a log file,
nohup, CI) one plain line every `interval` seconds, and one when the last frame is made.
"""

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cfcli.cli.common import console, is_tty

LOG_INTERVAL_S = 5.0


class ProgressView:
    def __init__(self, enabled: bool, fps: float, interval: float = LOG_INTERVAL_S):
        self.enabled, self.fps, self.interval = enabled, fps, interval
        self._bar, self._last_line = None, None

    def __enter__(self):
        return self

    def update(self, made: int, goal: int, elapsed: float, mem_gib: float | None = None) -> None:
        """`made` of `goal` frames generated in `elapsed` seconds; `mem_gib`: the GPU's peak memory (None off it)."""
        if not self.enabled:
            return
        rate = made / elapsed if elapsed > 0 else 0.0
        speed = f"{rate:.1f} fps ({rate / self.fps:.2f}× real time)"
        mem = f"{mem_gib:.1f} GiB" if mem_gib is not None else ""
        if is_tty():
            self._draw(made, goal, speed, mem)
        elif self._last_line is None or made >= goal or time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()
            eta = f", ETA {(goal - made) / rate:.0f}s" if 0 < rate and made < goal else ""
            console.print(f"generating {made}/{goal} frames, {speed}{eta}{', ' + mem if mem else ''}",
                          highlight=False, markup=False)

    def _draw(self, made: int, goal: int, speed: str, mem: str) -> None:
        if self._bar is None:
            self._bar = Progress(TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[speed]}"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[mem]}"), console=console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("gen", total=goal, completed=made, speed=speed, mem="")
        self._bar.update(self._task, completed=made, total=goal, speed=speed, mem=mem)

    def __exit__(self, *exc):
        if self._bar:
            self._bar.__exit__(*exc)
            self._bar = None
        return False


def status_line(quiet: bool):
    """The callback the pipeline reports loading through (`loading DiT 2.6 GB from …`), rendered dim."""
    from rich.markup import escape

    return (lambda m: None) if quiet else (lambda m: console.print(f"[dim]{escape(m)}…[/]"))


def record_bench(result: dict) -> None:
    """Keep the last `cf bench` result per device type, for the CPU notice (`cfcli.jobs.notices.cpu_notice`)."""
    import json

    from cfcli.jobs.notices import bench_record
    from cfcli.paths import write_atomic

    write_atomic(bench_record(result["device"].split(":")[0]), json.dumps(result))
