"""cfcli's own cache folder (converted checkpoints, prompt embeddings, compiled code): `$CF_HOME`, else the XDG
cache dir."""

import errno
import os
from pathlib import Path

from cfcli.errors import CfError


def cf_home() -> Path:
    if os.environ.get("CF_HOME"):
        return Path(os.environ["CF_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cfcli"


def cf_home_variable() -> str:
    return "CF_HOME" if os.environ.get("CF_HOME") else "CF_HOME (unset: $XDG_CACHE_HOME/cfcli or ~/.cache/cfcli)"


def hf_cache_variable() -> str:
    """The variable that decides where the Hugging Face cache is, for messages."""
    for name in ("HF_HUB_CACHE", "HF_HOME"):
        if os.environ.get(name):
            return name
    return "HF_HOME (unset: ~/.cache/huggingface)"


def usable_dir(path: Path, variable: str) -> Path:
    """`path`, created if needed and proven writable by creating a file in it; else a CfError naming `variable`."""
    probe = path / f".cf-write-test.{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as exc:
        why = {errno.EEXIST: "it is a file", errno.ENOTDIR: "part of it is a file", errno.EACCES: "permission denied",
               errno.EPERM: "not permitted", errno.EROFS: "read-only file system",
               errno.ENOSPC: "no space left"}.get(exc.errno, exc.strerror or type(exc).__name__)
        if path.is_file():
            why = "it is a file"
        name = variable.split()[0]
        raise CfError(f"{name} points at {path}, which cannot be used as a folder ({why})",
                      f"set {name} to a writable folder (or unset it to use the default)") from exc
    return path


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write text or bytes via a temp file and rename, so a reader never sees half a file (and a failed write leaves
    no temp file behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
