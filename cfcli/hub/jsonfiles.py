"""Small JSON records (conversion records, the verified-files list), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from cfcli.paths import write_atomic as _write_text


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    _write_text(path, json.dumps(data, indent=1, sort_keys=True))
