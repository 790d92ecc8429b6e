"""Is a converted checkpoint whole? A cheap check (header parses, file size is what the header says) used by every
look-up, and a full one (sha256 against the digest written beside it at conversion) for `cf download --verify`.

A truncated or damaged converted file is then simply "not converted": `cf generate` falls back to the checkpoint (or
asks for `cf download`), and the next `cf download` converts it again instead of reporting it ready.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from cfcli.paths import write_atomic

HEADER_LIMIT = 100 << 20  # safetensors refuses headers over 100 MB too


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def is_whole(path: Path) -> bool:
    """The file's safetensors header parses and the file is exactly as long as the tensors it lists."""
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > HEADER_LIMIT:
                return False
            header = json.loads(fh.read(n))
        size = path.stat().st_size
    except (OSError, struct.error, ValueError):
        return False
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    return bool(ends) and size == 8 + n + max(ends)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path) -> bool:
    """Whole, and its content hashes to the digest stored at conversion. A file converted before digests were kept
    gets one now (after the header check), so later runs can tell if it changes."""
    if not is_whole(path):
        return False
    stored = digest_path(path)
    try:
        expected = stored.read_text().strip()
    except OSError:
        expected = None
    actual = file_sha256(path)
    if expected is None:
        write_digest(path, actual)
        return True
    return actual == expected


def write_digest(path: Path, digest: str) -> None:
    write_atomic(digest_path(path), digest + "\n")


def discard(path: Path) -> None:
    """Remove a converted file that failed its check, with its digest."""
    path.unlink(missing_ok=True)
    digest_path(path).unlink(missing_ok=True)
