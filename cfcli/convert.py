"""Converting a generator checkpoint (`.pt`, a pickle) once into a bf16 safetensors file of only the weights used.

The official checkpoints hold `generator` and/or `generator_ema` in float32 (5.7 GB). Sampling uses one of the two, in
bf16 at most, so the converted file keeps just that set (bare WanModel key names) in bf16: half the size, memory-mapped
on load, no pickle. It is written tensor by tensor (the source is memory-mapped), so peak memory is one tensor, into a
temp file in the same folder that is renamed into place only when complete: an interrupted conversion never leaves a
file that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

from cfcli.errors import CfError

ALIGN = 8  # safetensors pads its header so the data starts 8-byte aligned


def _dtype_codes() -> dict:
    import torch

    return {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
            torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
            torch.bool: "BOOL"}


def plan_tensors(source: Path, use_ema: bool) -> dict:
    """The tensors the converted file will hold (bare keys), still lazy (memory-mapped) where the format allows."""
    import torch

    from cfcli.models.checkpoint import generator_state_dict, read_state_dict

    sd = generator_state_dict(read_state_dict(source), use_ema)
    bad = sorted(k for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if not sd or bad:
        raise CfError(f"{source.name} does not look like a generator checkpoint"
                      + (f" (non-tensor entries: {', '.join(bad[:3])})" if bad else " (no tensors)"),
                      "check the preset's generator file")
    return sd


def output_bytes(tensors: dict) -> int:
    """Size of the tensor data once floats are bf16 (the header adds a few kB)."""
    return sum(t.numel() * (2 if t.is_floating_point() else t.element_size()) for t in tensors.values())


def convert_generator(source: Path, target: Path, use_ema: bool, *, metadata: dict[str, str] | None = None,
                      on_tensor: Callable[[int, int], None] | None = None) -> Path:
    """Write the preset's weight set of `source` as bf16 safetensors at `target`, atomically; returns `target`.

    `on_tensor(done, total)` is called after each tensor (progress; raising from it aborts cleanly).
    """
    from cfcli.converted_check import write_digest
    from cfcli.hub import check_space

    tensors = plan_tensors(source, use_ema)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    check_space({target.parent: output_bytes(tensors)})
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    meta = {"format": "pt", "source": source.name, "weights": "generator_ema" if use_ema else "generator"}
    try:
        digest = _write_safetensors(tmp, tensors, {**meta, **(metadata or {})}, on_tensor)
        _check_readable(tmp, len(tensors))
        write_digest(target, digest)  # first: a digest without its file is harmless, the reverse is unverifiable
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)  # no-op after the rename; removes a partial file on any failure
    return target


def _cast(t):
    import torch

    return (t.to(torch.bfloat16) if t.is_floating_point() else t).contiguous()


def _write_safetensors(path: Path, tensors: dict, metadata: dict[str, str],
                       on_tensor: Callable[[int, int], None] | None) -> str:
    """The safetensors format written by hand (8-byte header length, JSON header, raw data) so each tensor can be
    cast and written on its own: `safetensors.torch.save_file` would need every bf16 copy in memory at once.
    Returns the file's sha256, computed as it is written (for `cf download --verify`)."""
    import torch

    codes = _dtype_codes()
    header: dict = {"__metadata__": metadata}
    offset = 0
    for key, t in tensors.items():
        dtype = torch.bfloat16 if t.is_floating_point() else t.dtype
        if dtype not in codes:
            raise CfError(f"cannot convert tensor {key} of type {t.dtype}")
        n = t.numel() * (2 if t.is_floating_point() else t.element_size())
        header[key] = {"dtype": codes[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % ALIGN)
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        def put(chunk) -> None:
            fh.write(chunk)
            digest.update(chunk)

        put(struct.pack("<Q", len(raw)))
        put(raw)
        for i, t in enumerate(tensors.values()):
            data = _cast(t)
            put(data.view(-1).view(torch.uint8).numpy().data if data.numel() else b"")
            del data
            if on_tensor:
                on_tensor(i + 1, len(tensors))
        fh.flush()
        os.fsync(fh.fileno())  # the rename must not land before the data does
    return digest.hexdigest()


def _check_readable(path: Path, count: int) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        if len(list(f.keys())) != count:
            raise CfError(f"conversion wrote a bad file {path}", "run `cf download` again")


def _remove_stale_temps(target: Path) -> None:
    """Temp files of conversions whose process is gone (killed mid-way) are only wasted space."""
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
