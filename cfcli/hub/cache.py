"""The local Hugging Face cache: where a repo's files are, read without the network.

huggingface_hub reads HF_HOME / HF_HUB_CACHE at import time, so this reads `huggingface_hub.constants` at call
time rather than copying the value."""

from __future__ import annotations

import re
from pathlib import Path

from cfcli.presets import WeightRef


COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def repo_dir(repo: str) -> Path:
    return hub_cache() / ("models--" + repo.replace("/", "--"))


def _commit_for(repo: str, revision: str | None) -> str | None:
    """The commit a branch/tag last resolved to in the cache (the cache's `refs/`), or the commit itself."""
    rev = revision or "main"
    if COMMIT.fullmatch(rev):
        return rev
    ref = repo_dir(repo) / "refs" / rev
    return ref.read_text().strip() if ref.is_file() else None


def cached_path(ref: WeightRef) -> Path | None:
    """The file or folder of `ref` in the local Hugging Face cache, or None."""
    commit = _commit_for(ref.repo, ref.revision)
    if commit is None:
        return None
    path = repo_dir(ref.repo) / "snapshots" / commit / (ref.file or ref.folder)
    if ref.file is not None:
        return path if path.is_file() else None  # is_file() follows the link: a deleted blob is not cached
    return path if path.is_dir() and any(path.iterdir()) else None


def disk_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (following the cache's links to blobs)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
