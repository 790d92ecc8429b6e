"""Downloads that survive a kill or Ctrl-C: the bytes so far stay in `blobs/<etag>.incomplete` and the next run asks
the Hub only for the rest (HTTP Range).

huggingface_hub writes each download to a file with a random name and deletes it on any failure, so an interrupted
download always restarts from byte 0, and a killed one leaves an orphan nobody reads. Here the partial has one name
per blob: it is kept on failure and on Ctrl-C, resumed by the next run, and an orphan of huggingface_hub's (same blob,
random name) is adopted instead of wasted. A partial larger than the file is stale and deleted; a resumed file that
fails its hash is deleted by the caller like any bad download, so the next attempt starts clean. Files stored with Xet
go through huggingface_hub, whose Xet client keeps its own chunk cache.
"""

from __future__ import annotations

import os
from pathlib import Path

PARTIAL = ".incomplete"


def partial_path(blob: Path) -> Path:
    return blob.with_name(blob.name + PARTIAL)


def adopt_partials(blob: Path, size: int) -> Path:
    """The partial to resume for `blob` (a file of `size` bytes): the longest usable one; the others are deleted."""
    own = partial_path(blob)
    candidates = [p for p in blob.parent.glob(f"{blob.name}*{PARTIAL}") if p.is_file()]
    usable = [p for p in candidates if p.stat().st_size <= size]
    best = max(usable, key=lambda p: p.stat().st_size, default=None)
    for p in candidates:
        if p != best:
            p.unlink(missing_ok=True)  # stale (too long) or shorter than the best
    if best is not None and best != own:
        os.replace(best, own)
    return own


def download(repo: str, path: str, commit: str, blob: Path, size: int, tqdm_class: type) -> Path:
    """Fetch the file into `blob` (resuming its partial), link it from the snapshot; returns the snapshot path."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url, http_get
    from huggingface_hub.utils import WeakFileLock, build_hf_headers
    from huggingface_hub.utils._runtime import is_xet_available

    headers = build_hf_headers()
    meta = get_hf_file_metadata(hf_hub_url(repo, path, revision=commit, endpoint=constants.ENDPOINT),
                                headers=headers)
    if meta.xet_file_data is not None and is_xet_available():
        return Path(hf_hub_download(repo, path, revision=commit, tqdm_class=tqdm_class))
    blob.parent.mkdir(parents=True, exist_ok=True)
    lock = Path(constants.HF_HUB_CACHE) / ".locks" / blob.parent.parent.name / f"{blob.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(str(lock)):
        if not (blob.is_file() and blob.stat().st_size == size):
            partial = adopt_partials(blob, size)
            with open(partial, "ab") as fh:
                http_get(meta.location, fh, resume_size=partial.stat().st_size, headers=headers, expected_size=size,
                         displayed_filename=path, tqdm_class=tqdm_class)
            os.replace(partial, blob)
        return link(blob, commit, path)


def link(blob: Path, commit: str, path: str) -> Path:
    """The snapshot entry, a relative symlink to the blob, as huggingface_hub lays the cache out."""
    pointer = blob.parent.parent / "snapshots" / commit / path
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    return pointer
