"""What the client checks itself: `--open` needs a desktop here, and which options the user typed (the job's own
checks are `cfcli.jobs.checks`)."""

import os
import shutil
import sys

from cfcli.errors import CfError


def given(ctx, option: str) -> bool:
    """Whether the user typed the option (not just left its default); `ctx` is the command's typer.Context."""
    source = ctx.get_parameter_source(option) if ctx is not None else None
    return getattr(source, "name", None) == "COMMANDLINE"


def check_open(open_: bool) -> None:
    """`--open` needs a desktop to play on: on a headless machine say so before the run, not silently after it."""
    if not open_ or sys.platform in ("win32", "darwin"):  # startfile / open are always there
        return
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise CfError("--open needs a display, and this machine has none (DISPLAY and WAYLAND_DISPLAY are unset)",
                      "leave out --open; the summary prints the video's path")
    if shutil.which("xdg-open") is None:
        raise CfError("--open needs xdg-open, which is not installed", "install xdg-utils, or leave out --open")
