"""Checking a cached file's content against the Hub's hash, remembered so an unchanged file is hashed once; a file
that fails is deleted, never left in the cache."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from cfcli.hub.hubfile import HubFile
from cfcli.hub.verified import forget_verified, is_verified, mark_verified


HASH_CHUNK = 8 << 20


def content_hash(path: Path, etag: str, on_bytes: Callable[[int], None] | None = None) -> str:
    """The file's sha256 (for a 64-hex etag: LFS files) or git blob sha1 (40-hex etag: regular files)."""
    size = path.stat().st_size
    digest = hashlib.sha256() if len(etag) == 64 else hashlib.sha1(b"blob %d\0" % size)
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
            if on_bytes:
                on_bytes(n)
    return digest.hexdigest()


def check_content(path: Path, f: HubFile, on_bytes: Callable[[int], None] | None = None, *,
                  recheck: bool = False) -> bool:
    """True when the cached file has the Hub's size and hash; remembered so unchanged files are hashed once
    (`recheck` hashes it again anyway)."""
    blob = Path(os.path.realpath(path))
    if not f.etag or blob.stat().st_size != f.size:
        return False
    if not recheck and is_verified(blob, f.etag, f.size):
        return True
    if content_hash(blob, f.etag, on_bytes) != f.etag:
        return False
    mark_verified(blob, f.etag)
    return True


def discard(f: HubFile) -> None:
    """Delete a file that failed its check: the snapshot link and the blob, so nothing can ever load it."""
    pointer = f.pointer
    targets = {pointer, f.blob}
    if pointer.is_symlink() or pointer.exists():
        targets.add(Path(os.path.realpath(pointer)))
    for p in targets:
        forget_verified(p)
        p.unlink(missing_ok=True)
