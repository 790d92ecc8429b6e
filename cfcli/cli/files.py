"""What a command writes beside its video: poster frames, and `--open`."""

import os
import subprocess
import sys
from pathlib import Path

from cfcli.errors import CfError


def poster_path(video: Path) -> Path:
    return video.with_suffix(".jpg")


def write_poster(video: Path) -> Path:
    """A JPEG of the clip's first frame beside it (`clip.jpg`), for file browsers and web pages."""
    import av

    target = poster_path(video)
    with av.open(str(video)) as container:
        frame = next(container.decode(video=0), None)
        if frame is None:
            raise CfError(f"{video} has no frame to make a poster from")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        frame.to_image().save(tmp, format="JPEG", quality=90)
    os.replace(tmp, target)
    return target


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
