"""Output files written beside, then renamed: a run never touches what is at its paths until its file is complete.

`reserve(path, overwrite)` checks the path, takes an exclusive lock beside it (a second run on the same output
refuses; `flock` is released by the kernel when a process dies, so a killed run never blocks the next) and creates
the hidden temp file `.<stem>.cf-XXXX.partial<ext>` in the destination folder, which proves the folder writable
before any model loads. The temp file keeps the real extension so the muxer picks the right format. `commit()`
renames the finished file into place, `discard()` removes it, `keep_partial()` keeps an interrupted video: under the
final name when nothing was there, else beside it as `<stem>.partial<ext>`. A process killed outright (SIGKILL)
leaves its temp file hidden; `adopt_stale(folder)` finds those whose lock no process holds and renames them
`<stem>.partial<ext>`.
"""

import errno
import fcntl
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cfcli.errors import CfError

_NO_SPACE = "free some disk space, or choose a path on another disk"
_NOT_ALLOWED = "you may not write there: choose a writable folder"
_NOT_A_FOLDER = "a part of that path is a file, not a folder: choose another path"
HINTS = {errno.ENOSPC: _NO_SPACE, errno.EDQUOT: _NO_SPACE,
         errno.EFBIG: "the file system's file-size limit was reached: choose a path on another file system, or make "
                      "a shorter video",
         errno.EROFS: "that file system is read-only: choose a path on a writable disk",
         errno.EACCES: _NOT_ALLOWED, errno.EPERM: _NOT_ALLOWED,
         errno.EISDIR: "that is a folder: give a file name, e.g. outputs/video.mp4",
         errno.ENOTDIR: _NOT_A_FOLDER, errno.EEXIST: _NOT_A_FOLDER,
         errno.ENOENT: "that folder cannot hold files: choose another path"}


def write_error(what: str, path: Path, exc: BaseException, hint: str | None = None) -> CfError:
    """A write failure as a message: the path, the OS reason, what to do, and that the path was left as it was."""
    reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__)
    hint = HINTS.get(getattr(exc, "errno", None), hint or "choose another path")
    return CfError(f"cannot write {what} {path}: {reason.splitlines()[0]}", f"{hint} (nothing at {path} was changed)")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same absolute path, or links to one existing file."""
    if Path(os.path.abspath(a)) == Path(os.path.abspath(b)):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _lock(final: Path) -> tuple[int, Path] | None:
    """An exclusive lock on `.<name>.cf-lock` beside the output; refuses when another run holds it."""
    path = final.with_name(f".{final.name}.cf-lock")
    for _ in range(3):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CfError(f"another cf run is writing {final}", "wait for it to finish, or choose another path")
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP):  # a file system without locks: go on unlocked
                return None
            raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd, path
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed the lock file between our open and our lock: take the new one
    raise CfError(f"another cf run is writing {final}", "wait for it to finish, or choose another path")


def _usual_mode(path: Path) -> None:
    """mkstemp makes 0600 files (writers may replace them): the output gets the permissions of a new file."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def slug(text: str, n: int = 48) -> str:
    """A file-name stem from a prompt: lower-case ASCII words joined by '-', at most `n` characters."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (s[:n].rstrip("-")) or "video"


def free_name(path: Path) -> Path:
    """`path`, or `stem-2.ext`, `stem-3.ext`, … whichever does not exist yet."""
    n, candidate = 2, path
    while candidate.exists() or candidate.is_symlink():
        candidate, n = path.with_name(f"{path.stem}-{n}{path.suffix}"), n + 1
    return candidate


@dataclass
class Target:
    """One reserved output: the final path, the temp file beside it, and the lock that keeps other runs off it."""

    final: Path
    temp: Path
    what: str
    lock: tuple[int, Path] | None = field(default=None, repr=False)
    made: list[Path] = field(default_factory=list)  # folders made for it, deepest first: removed again on discard
    done: bool = False

    def commit(self) -> Path:
        """The finished temp file renamed into place (replacing what was there)."""
        try:
            _usual_mode(self.temp)
            os.replace(self.temp, self.final)
        except OSError as exc:
            raise write_error(self.what, self.final, exc) from exc
        self._release()
        return self.final

    def keep_partial(self) -> Path:
        """An interrupted file: under the final name when nothing was there, otherwise beside it."""
        dest = self.final
        if dest.exists() or dest.is_symlink():
            dest = free_name(self.final.with_name(f"{self.final.stem}.partial{self.final.suffix}"))
        try:
            _usual_mode(self.temp)
            os.replace(self.temp, dest)
        except OSError as exc:
            raise write_error(self.what, dest, exc) from exc
        self._release()
        return dest

    def discard(self) -> None:
        """Remove the temp file (a no-op once committed or kept)."""
        if not self.done:
            self.temp.unlink(missing_ok=True)
            self._release()
            _remove_empty(self.made)

    def _release(self) -> None:
        self.done = True
        _unlock(self.lock)
        self.lock = None


def _unlock(lock: tuple[int, Path] | None) -> None:
    if lock is not None:
        fd, path = lock
        path.unlink(missing_ok=True)  # while still held: a run that opened the old file sees it is gone
        os.close(fd)


def check(final: Path, overwrite: bool, option: str = "--out") -> None:
    """Refuse a folder, and an existing file without `overwrite` (nothing is created)."""
    final = Path(final)
    if final.is_dir():
        raise CfError(f"{option} {final} is a folder", f"give a file name, e.g. {final / 'video.mp4'}")
    if (final.exists() or final.is_symlink()) and not overwrite:
        raise CfError(f"{final} already exists", f"pass --overwrite to replace it, or choose another {option}")


def reserve(final: Path, overwrite: bool, what: str = "the video", option: str = "--out") -> Target:
    """Check `final`, lock it and create its temp file; CfError (nothing left behind) when it cannot be written."""
    final = Path(final)
    check(final, overwrite, option)
    made = []
    for folder in final.parents:  # the folders that mkdir will make, deepest first
        if folder.exists() or folder.is_symlink():
            break
        made.append(folder)
    lock = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock(final)
        fd, temp = tempfile.mkstemp(prefix=f".{final.stem}.cf-", suffix=f".partial{final.suffix}", dir=final.parent)
    except OSError as exc:
        _unlock(lock)
        _remove_empty(made)
        raise write_error(what, final, exc) from exc
    except CfError:
        _remove_empty(made)
        raise
    os.close(fd)
    return Target(final, Path(temp), what, lock, made)


_TEMP_NAME = re.compile(r"\.(?P<stem>.+)\.cf-[A-Za-z0-9_]+\.partial(?P<suffix>\.[A-Za-z0-9]+)")


def adopt_stale(folder: Path) -> list[Path]:
    """The temp files in `folder` of runs that died (no process holds their lock), each renamed, never over a file, to
    `<stem>.partial<ext>` so it is seen; an empty one is removed. A file a running process writes is left alone."""
    kept = []
    for temp in sorted(folder.glob(".*.cf-*.partial.*")) if folder.is_dir() else ():
        m = _TEMP_NAME.fullmatch(temp.name)
        if m is None or not temp.is_file():
            continue
        final = folder / f"{m['stem']}{m['suffix']}"
        try:
            lock = _lock(final)
        except (CfError, OSError):  # its run is alive (or the lock cannot be taken): not ours to move
            continue
        if lock is None:  # a file system without locks cannot tell a live run from a dead one
            continue
        try:
            if temp.stat().st_size == 0:
                temp.unlink()
                continue
            dest = free_name(final.with_name(f"{final.stem}.partial{final.suffix}"))
            _usual_mode(temp)
            os.replace(temp, dest)
            kept.append(dest)
        except OSError:
            continue
        finally:
            _unlock(lock)
    _clear_dead_locks(folder)
    return kept


def _clear_dead_locks(folder: Path) -> None:
    """Lock files whose runs died (flock went with them) hold nothing: taken and removed, so none pile up."""
    for path in sorted(folder.glob(".*.cf-lock")) if folder.is_dir() else ():
        try:
            _unlock(_lock(folder / path.name[1:-len(".cf-lock")]))
        except (CfError, OSError):  # a running process holds it: leave it
            continue


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


@dataclass
class Outputs:
    """The reserved outputs of one run: the video and, with `--save-latents`, the latents. A context manager that
    discards whatever was not committed or kept when it exits."""

    video: Target
    latents: Target | None = None

    def discard(self) -> None:
        for target in (self.video, self.latents):
            if target is not None:
                target.discard()

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()
