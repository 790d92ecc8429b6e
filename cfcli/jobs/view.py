"""How a job reports: lines, progress and summaries, as calls on a `View`.

`cf generate` in its own process renders them on the terminal (`cfcli.cli.view.ConsoleView`); `cf serve` sends each
call to the client that asked for the job (`cfcli.serve.app`), which renders it with the same `ConsoleView`. So a job
looks the same wherever it runs. Every argument is plain data (str, numbers, dicts of them): it travels as JSON.
"""

from typing import Protocol

from rich.markup import escape


class View(Protocol):
    quiet: bool  # nothing but the summary (and errors) to show

    def line(self, markup: str) -> None:
        """A line of Rich markup for the terminal."""

    def progress_start(self, fps: float) -> None:
        """A video's frames start coming (`fps`: its playback rate)."""

    def progress(self, made: int, goal: int, elapsed: float, mem_gib: float | None) -> None:
        """`made` of `goal` generated frames are in the file, `elapsed` seconds after the video started."""

    def progress_end(self) -> None:
        """The video's frames are done (or stopped)."""

    def summary(self, fields: dict, phases: dict | None = None) -> None:
        """A video is finished: `summary_fields` of its `Summary`, and where its time went."""

    def stopped(self) -> int:
        """The signal number that asked the job to stop (Ctrl-C: SIGINT), 0 for none."""


def note(view: View, text: str) -> None:
    """A yellow `note:` line (plain text)."""
    if not view.quiet:
        view.line(f"[yellow]note:[/] {escape(text)}")


def status(view: View):
    """The callback a session reports model loading through (`loading DiT 2.6 GB from …`), rendered dim."""
    return lambda m: None if view.quiet else view.line(f"[dim]{escape(m)}…[/]")


def summary_fields(s) -> dict:
    """A `Summary` as the plain fields a summary line (or `--json`) shows."""
    return {"path": str(s.path), "frames": s.frames, "fps": s.fps, "seconds": s.seconds, "seed": s.seed,
            "preset": s.preset, "first_frame_s": s.first_frame_s, "elapsed_s": s.elapsed, "generated_frames": s.generated,
            "generation_fps": s.generation_fps, "interrupted": s.interrupted,
            "left_untouched": str(s.extra["left_untouched"]) if s.extra.get("left_untouched") else None}
