"""Live progress for generation: frames done / total, speed against real time, ETA, GPU memory."""

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cfcli.cli.common import console


class ProgressView:
    def __init__(self, enabled: bool, fps: int, device):
        self.enabled, self.fps, self.device = enabled, fps, device
        self._bar = None

    def __enter__(self):
        if self.enabled:
            self._bar = Progress(TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[speed]}"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[mem]}"), console=console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("gen", total=None, speed="", mem="")
        return self

    def update(self, p) -> None:
        if not self._bar:
            return
        rate = p.frames_done / p.elapsed if p.elapsed > 0 else 0.0
        speed = f"{rate:.1f} fps ({rate / self.fps:.2f}× real time)"
        self._bar.update(self._task, completed=p.frames_done, total=p.frames_total, speed=speed, mem=self._mem())

    def _mem(self) -> str:
        if self.device.type != "cuda":
            return ""
        import torch

        return f"{torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB"

    def __exit__(self, *exc):
        if self._bar:
            self._bar.__exit__(*exc)
        return False
