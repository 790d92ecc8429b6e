"""Disk space: refusing a download or conversion that would not fit."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cfcli.errors import CfError
from cfcli.hub.hints import human


def check_space(wants: dict[Path, int]) -> None:
    """Raise unless every disk has room for the bytes about to be written to folders on it."""
    per_disk: dict[int, list] = {}
    for folder, n in wants.items():
        anchor = _existing_ancestor(folder)
        per_disk.setdefault(os.stat(anchor).st_dev, [anchor, 0])[1] += n
    for anchor, n in per_disk.values():
        free = shutil.disk_usage(anchor).free
        if n > free:
            raise CfError(f"not enough disk space: {human(n)} to write under {anchor}, {human(free)} free",
                          "free some space, or point HF_HUB_CACHE / CF_HOME at a disk with room")


def free_space(folder: Path) -> int:
    return shutil.disk_usage(_existing_ancestor(folder)).free


def _existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
