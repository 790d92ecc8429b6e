"""`--open`: the video played on the client's desktop."""

import os
import subprocess
import sys
from pathlib import Path

from cfcli.errors import CfError


def open_file(path: Path) -> None:
    """Play `path` with the desktop's default application (`open`, `startfile`, `xdg-open`)."""
    if sys.platform == "win32":
        os.startfile(str(path))  # noqa: S606 - the user asked for it with --open
        return
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    try:
        subprocess.Popen([opener, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as exc:
        raise CfError(f"cannot open {path}: {opener} failed ({exc.strerror})",
                      "open the file yourself; the video is written") from exc
