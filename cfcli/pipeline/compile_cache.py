"""Compiled code kept between processes: what `torch.compile` made for an engine's DiT blocks (Inductor's graphs and
kernels, AOTAutograd's entries, autotuning results), saved in `$CF_HOME/compiled` after the engine's first video and
loaded by the next process before it compiles, so a fresh `cf generate` finds the graphs and kernels instead of making
them again (Dynamo still traces the two stages: that part PyTorch does not cache).

Through PyTorch's own API: `torch.compiler.load_cache_artifacts` fills PyTorch's caches from the file (it must run
before the first compiled call of the process: what is compiled already is not looked up again);
`torch.compiler.save_cache_artifacts` returns every artefact the process compiled or found in those caches, so a
file holds what the process that wrote it used.

One file per `key`: the torch version, the GPU (name and compute capability), the dtype, the DiT's sizes and the
preset's latent shapes, and what the compiled stages are made of (the levers on, the blocks' module types). PyTorch
checks each artefact against its own key as it loads it, so a file that does not fit is only wasted, never wrong.
A file is written (beside, then renamed) only when the process holds artefacts it did not; a missing, unreadable or
damaged one is ignored and written over by the next save. Neither ever fails a run.
"""

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cfcli.paths import cf_home, write_atomic

if TYPE_CHECKING:
    from cfcli.pipeline.engine import Engine

FOLDER = "compiled"


@dataclass
class Artefacts:
    """One engine's artefact file and the artefacts it is known to hold (read from it, or last written to it)."""

    path: Path
    known: frozenset[str] = frozenset()


def key(engine: "Engine") -> dict:
    """What the engine's compiled code depends on, beyond the code itself (call when its levers are on, before
    compiling)."""
    dev = engine.device
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        device = f"{torch.cuda.get_device_name(dev)} sm{major}{minor}"
    else:
        device = "cpu"
    blocks = engine.dit.distinct_blocks()
    return {"torch": torch.__version__, "device": device, "dtype": str(engine.dtype).removeprefix("torch."),
            "dit": asdict(engine.dit.cfg), "latent": [engine.preset.block_frames, *engine.latent_hw],
            "sampler": engine.preset.sampler, "levers": sorted(engine.applied),
            "modules": sorted({type(m).__qualname__ for blk in blocks for m in blk.modules()})}


def folder() -> Path:
    """`$CF_COMPILED_DIR` (`cf bench --cold` points it at a temp folder: its first run compiles as on a new machine),
    else `$CF_HOME/compiled`."""
    given = os.environ.get("CF_COMPILED_DIR")
    return Path(given) if given else cf_home() / FOLDER


def path_for(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return folder() / f"{digest}.bin"


def load(key: dict) -> Artefacts:
    """Fill PyTorch's compile caches from the file saved under `key`, if there is a usable one."""
    path = path_for(key)
    try:
        data = path.read_bytes()
        with quiet():
            info = torch.compiler.load_cache_artifacts(data)
    except Exception:  # noqa: BLE001 - missing, unreadable or damaged: compiled afresh, written over by `save`
        info = None
    return Artefacts(path, names(info))


def save(artefacts: Artefacts) -> bool:
    """Write every artefact this process holds to the file, when it holds some the file does not; True if written."""
    try:
        with quiet():
            saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return False
        data, info = saved
        held = names(info)
        if held <= artefacts.known:
            return False
        write_atomic(artefacts.path, data)
    except Exception:  # noqa: BLE001 - a cache that cannot be written costs the next process a compile, nothing more
        return False
    artefacts.known = held
    return True


def names(info) -> frozenset[str]:
    """The artefacts a `torch.compiler` `CacheInfo` lists, as "kind:key"."""
    if info is None:
        return frozenset()
    return frozenset(f"{kind}:{name}" for kind, keys in info.artifacts.items() for name in keys)


@contextmanager
def quiet():
    """PyTorch logs a damaged file as a warning with a traceback; here it is only a cache miss."""
    log = logging.getLogger("torch.compiler._cache")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
