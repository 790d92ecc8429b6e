"""The shipped download manifest (`presets/manifest.json`): each preset's Hub files with their sizes, so that
`cf download --dry-run` can say how much a preset needs when the Hub cannot be asked (offline, unreachable)."""

import json
from dataclasses import dataclass

from cfcli.errors import CfError
from cfcli.presets import WEIGHT_ROLES, Preset, WeightRef, presets_dir


@dataclass(frozen=True)
class Listed:
    label: str
    size: int | None  # None: not known
    approx: bool


def key(ref: WeightRef) -> str:
    return f"{ref.repo}:{ref.file}" if ref.file else f"{ref.repo}:{ref.folder.rstrip('/')}/"


def load() -> dict:
    try:
        return json.loads((presets_dir() / "manifest.json").read_text())["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise CfError(f"the shipped download manifest is unreadable: {exc}", "reinstall cfcli") from exc


def listed(preset: Preset) -> list[Listed]:
    """The preset's Hub files as the manifest lists them (local `path` weights are not downloads)."""
    files = load()
    out = []
    for role in WEIGHT_ROLES:
        ref = preset.weights[role]
        if ref.repo is None:
            continue
        entry = files.get(key(ref)) if ref.revision is None else None  # a pinned revision may differ in size
        out.append(Listed(f"{ref.repo}/{ref.file or ref.folder}", entry and entry["bytes"],
                          entry is None or entry["approx"]))
    return out


def total(items: list[Listed]) -> tuple[int, bool]:
    """(bytes known, whether the sum is exact): unknown sizes make it a lower bound."""
    return sum(i.size or 0 for i in items), all(i.size is not None and not i.approx for i in items)
