"""Figures traced on the meta device, kept between processes. Tracing the decoder there (`cfcli.pipeline.memory`)
runs some of PyTorch's Python reference kernels, whose first call imports `torch._dynamo`: seconds of every fresh
`cf generate`, even one that compiles nothing. A figure depends only on what it was traced from, the code that traced
it and the torch version, so it is kept in `$CF_HOME/compiled/<key>.json` and read back by the next process.

A missing, unreadable or damaged file is traced again and written over (temp file and rename); neither fails a run.
"""

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from cfcli.paths import cf_home, write_atomic

FOLDER = "compiled"  # with the compiled code: both are what this torch made of this code (`cf cache`)


def code_digest(*modules) -> str:
    """A digest of the modules' source files: a figure traced through changed code is traced again."""
    h = hashlib.sha256()
    for m in modules:
        h.update(Path(m.__file__).read_bytes())
    return h.hexdigest()


def remember(parts: tuple, code: str, trace: Callable[[], tuple[int, ...]]) -> tuple[int, ...]:
    """`trace()`'s figures for `parts` (their repr keys them) traced through `code` (a `code_digest`), from the file
    an earlier process wrote where there is one."""
    what = repr(parts)
    key = hashlib.sha256(json.dumps([torch.__version__, code, what]).encode()).hexdigest()[:24]
    path = cf_home() / FOLDER / f"{key}.json"
    try:
        kept = json.loads(path.read_text())
        if kept["what"] == what and all(isinstance(v, int) for v in kept["value"]):
            return tuple(kept["value"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = tuple(trace())
    try:
        write_atomic(path, json.dumps({"what": what, "value": list(value)}))
    except OSError:
        pass
    return value
