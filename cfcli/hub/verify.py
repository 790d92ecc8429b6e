"""Checking a cached file's content against the Hub's hash, remembered so an unchanged file is hashed once; a file
that fails is deleted, never left in the cache."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cfcli.hub.jsonfiles import _read_json, _write_json
from cfcli.paths import cf_home

if TYPE_CHECKING:  # a HubFile knows whether it is verified: listing imports this module
    from cfcli.hub.listing import HubFile


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
    if not recheck and _is_verified(blob, f.etag, f.size):
        return True
    if content_hash(blob, f.etag, on_bytes) != f.etag:
        return False
    _mark_verified(blob, f.etag)
    return True


def discard(f: HubFile) -> None:
    """Delete a file that failed its check: the snapshot link and the blob, so nothing can ever load it."""
    pointer = f.pointer
    targets = {pointer, f.blob}
    if pointer.is_symlink() or pointer.exists():
        targets.add(Path(os.path.realpath(pointer)))
    for p in targets:
        _forget_verified(p)
        p.unlink(missing_ok=True)


def _verified_db() -> Path:
    return cf_home() / "verified.json"


def _is_verified(blob: Path, etag: str, size: int) -> bool:
    try:
        st = blob.stat()
    except OSError:
        return False
    return st.st_size == size and _read_json(_verified_db()).get(str(blob)) == [etag, st.st_size, st.st_mtime_ns]


def _mark_verified(blob: Path, etag: str) -> None:
    st = blob.stat()
    db = _read_json(_verified_db())
    db[str(blob)] = [etag, st.st_size, st.st_mtime_ns]
    _write_json(_verified_db(), db)


def _forget_verified(blob: Path) -> None:
    db = _read_json(_verified_db())
    if db.pop(str(blob), None) is not None:
        _write_json(_verified_db(), db)
