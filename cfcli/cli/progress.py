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
    def __init__(self, enabled: bool, fps: float, device, interval: float = LOG_INTERVAL_S):
        self.enabled, self.fps, self.device, self.interval = enabled, fps, device, interval
        self._bar, self._last_line = None, None

    def __enter__(self):
        return self

    def update(self, p) -> None:
        if not self.enabled:
            return
        made, goal = p.frames_done - p.frames_before, p.frames_total - p.frames_before
        rate = made / p.elapsed if p.elapsed > 0 else 0.0
        speed = f"{rate:.1f} fps ({rate / self.fps:.2f}× real time)"
        if is_tty():
            self._draw(made, goal, speed)
        elif self._last_line is None or made >= goal or time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()
            eta = f", ETA {(goal - made) / rate:.0f}s" if 0 < rate and made < goal else ""
            mem = f", {self._mem()}" if self._mem() else ""
            console.print(f"generating {made}/{goal} frames, {speed}{eta}{mem}", highlight=False, markup=False)

    def _draw(self, made: int, goal: int, speed: str) -> None:
        if self._bar is None:
            self._bar = Progress(TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[speed]}"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[mem]}"), console=console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("gen", total=goal, completed=made, speed=speed, mem="")
        self._bar.update(self._task, completed=made, total=goal, speed=speed, mem=self._mem())

    def _mem(self) -> str:
        if self.device.type != "cuda":
            return ""
        import torch

        return f"{torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB"

    def __exit__(self, *exc):
        if self._bar:
            self._bar.__exit__(*exc)
        return False


def status_line(quiet: bool):
    """The callback the pipeline reports loading through (`loading DiT 2.6 GB from …`), rendered dim."""
    from rich.markup import escape

    return (lambda m: None) if quiet else (lambda m: console.print(f"[dim]{escape(m)}…[/]"))


def cpu_notice(device, asked: str | None, quiet: bool) -> None:
    """Say so when generation runs on the CPU: it works, at a small fraction of a GPU's speed (the last
    `cf bench --device cpu` on this machine says how small)."""
    if quiet or device.type != "cpu":
        return
    why = "no CUDA GPU found" if asked is None else f"--device {asked}"
    last = recorded_bench("cpu")
    speed = (f"`cf bench` measured {last['fps_end_to_end']:.2g} frames/s here ({last['preset']}, "
             f"{last['width']}×{last['height']})" if last else "`cf bench --device cpu` measures this machine")
    console.print(f"[yellow]note:[/] running on the CPU ({why}): far slower than a GPU; {speed}")


def bench_record(device_type: str):
    from cfcli.paths import cf_home

    return cf_home() / "bench" / f"last-{device_type}.json"


def record_bench(result: dict) -> None:
    """Keep the last `cf bench` result per device type, for the CPU notice."""
    import json

    from cfcli.paths import write_atomic

    write_atomic(bench_record(result["device"].split(":")[0]), json.dumps(result))


def recorded_bench(device_type: str) -> dict | None:
    import json

    try:
        data = json.loads(bench_record(device_type).read_text())
        return data if isinstance(data.get("fps_end_to_end"), float) else None
    except (OSError, ValueError, AttributeError):
        return None
