"""Converted generator checkpoints: `.pt` files turned into bf16 safetensors once, named by the source blob,
with a record per preset reference for when the `.pt` is no longer in the HF cache."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from cfcli.converted_check import is_whole
from cfcli.hub.cache import cached_path
from cfcli.hub.jsonfiles import _read_json, _write_json
from cfcli.paths import cf_home
from cfcli.presets import Preset, WeightRef


CONVERTIBLE = (".pt", ".pth", ".bin")  # pickled checkpoints that are converted to safetensors once
HEX_ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def needs_conversion(ref: WeightRef) -> bool:
    return ref.path is None and ref.file is not None and Path(ref.file).suffix in CONVERTIBLE


def converted_dir() -> Path:
    return cf_home() / "converted"


def converted_name(etag: str, use_ema: bool) -> str:
    """Named by the source blob's identity, so a different checkpoint (or the other weight set) never reuses it."""
    return f"{etag}-{'ema' if use_ema else 'noema'}.safetensors"


def blob_etag(path: Path) -> str | None:
    """The Hub etag (sha256 for LFS files) of a cached file: the cache names each blob by it."""
    name = Path(os.path.realpath(path)).name
    return name if HEX_ETAG.fullmatch(name) else None


def _record_path(ref: WeightRef, use_ema: bool) -> Path:
    key = json.dumps([ref.repo, ref.revision or "main", ref.file, use_ema])
    return converted_dir() / "refs" / f"{hashlib.sha1(key.encode()).hexdigest()[:24]}.json"


def record_conversion(ref: WeightRef, use_ema: bool, etag: str, commit: str) -> None:
    """Remember which converted file `ref` means, for when its `.pt` is not (or no longer) in the HF cache."""
    rec = {"repo": ref.repo, "revision": ref.revision or "main", "file": ref.file, "use_ema": use_ema,
           "etag": etag, "commit": commit, "converted": converted_name(etag, use_ema)}
    _write_json(_record_path(ref, use_ema), rec)


def converted_path(preset: Preset, whole: bool = True) -> Path | None:
    """The bf16 safetensors made from the preset's generator checkpoint, if it has been converted (and, with `whole`,
    is complete: a damaged file counts as not converted, so it is converted again)."""
    ref = preset.weights["generator"]
    if not needs_conversion(ref):
        return None
    source = cached_path(ref)
    if source is not None:  # the cached checkpoint decides; a conversion of another version must not stand in
        etag = blob_etag(source)
        found = converted_dir() / converted_name(etag, preset.use_ema) if etag else None
        return found if found is not None and (not whole or is_whole(found)) else None
    rec = _read_json(_record_path(ref, preset.use_ema))
    found = converted_dir() / str(rec["converted"]) if rec.get("converted") else None
    return found if found is not None and (not whole or is_whole(found)) else None
