"""What a job writes beside its video (posters), and the set of paths a run writes (`PathSet`)."""

import os
from pathlib import Path

from cfcli.errors import CfError


class PathSet:
    """Paths a run writes, each with what it is, compared as `outputs.same_file` does (one absolute path, or links to
    one existing file) but looked up in constant time: planning thousands of outputs stays linear."""

    def __init__(self):
        self._what: dict = {}
        self._folders: dict[str, str] = {}  # folder as given -> its real path (resolved once per folder)

    def _keys(self, path: Path) -> list:
        folder, name = os.path.split(os.fspath(path))
        real = self._folders.get(folder)
        if real is None:
            real = self._folders[folder] = os.path.realpath(folder or ".")
        keys = [os.path.join(real, name)]
        try:
            st = os.stat(path)  # an existing file: links and hard links to it are the same file
            keys.append((st.st_dev, st.st_ino))
        except OSError:
            pass
        return keys

    def add(self, path: Path, what: str = "") -> None:
        for key in self._keys(path):
            self._what.setdefault(key, what)

    def get(self, path: Path) -> str | None:
        """What `path` is in the set, or None when it names none of them."""
        return next((self._what[k] for k in self._keys(path) if k in self._what), None)

    def __contains__(self, path: Path) -> bool:
        return self.get(path) is not None


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
