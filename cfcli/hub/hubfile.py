"""One file of a Hub repo at a resolved commit: where the cache keeps it, and whether it is there and verified."""

import os
from dataclasses import dataclass
from pathlib import Path

from cfcli.hub.cache import repo_dir
from cfcli.hub.verified import is_verified


@dataclass(frozen=True)
class HubFile:
    """One file of a repo at a resolved commit, as the Hub lists it."""

    repo: str
    revision: str | None  # as the preset asks (None = main)
    commit: str
    path: str
    size: int
    sha256: str | None  # LFS files
    blob_id: str | None  # the git blob sha1 (regular files are checked against it)

    @property
    def etag(self) -> str:
        """What the Hub's ETag says and the cache names the blob by: the sha256 for LFS files, else the git sha1."""
        return self.sha256 or self.blob_id or ""

    @property
    def label(self) -> str:
        return f"{self.repo}/{self.path}"

    @property
    def pointer(self) -> Path:
        return repo_dir(self.repo) / "snapshots" / self.commit / self.path

    @property
    def blob(self) -> Path:
        return repo_dir(self.repo) / "blobs" / self.etag

    def cached(self) -> bool:
        """Already here at the right size (as a snapshot link or a blob another revision shares)."""
        return any(p.is_file() and p.stat().st_size == self.size for p in (self.pointer, self.blob))

    def verified(self) -> bool:
        """Cached, and its content was hashed against the Hub's before (and has not changed since)."""
        return self.pointer.is_file() and is_verified(Path(os.path.realpath(self.pointer)), self.etag, self.size)
