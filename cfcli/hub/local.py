"""Where a preset's weights are on this machine (never the network, so `cf generate` works with
HF_HUB_OFFLINE=1), and the per-preset status `cf models` shows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cfcli.errors import CfError
from cfcli.hub.cache import cached_path, disk_size
from cfcli.hub.converted import converted_path
from cfcli.hub.hints import download_hint
from cfcli.presets import WEIGHT_ROLES, Preset


def resolve(preset: Preset, role: str) -> Path:
    """Local path of the preset's `role` weights (a file, or the tokenizer folder); the converted generator if any."""
    ref = preset.weights[role]
    if ref.path is not None:
        if not ref.path.exists():
            raise CfError(f"{role} weights not found at {ref.path}", "fix the path in the preset")
        return ref.path
    if role == "generator":
        converted = converted_path(preset)
        if converted is not None:
            return converted
    path = cached_path(ref)
    if path is None:
        raise CfError(f"{role} weights {ref.label} are not downloaded", download_hint(preset))
    return path


def resolve_all(preset: Preset) -> dict[str, Path]:
    """Every weight role's local path; a CfError naming the first that is missing (and how to get it)."""
    return {role: resolve(preset, role) for role in WEIGHT_ROLES}


@dataclass
class LocalStatus:
    """What `cf models` shows for one preset: each role's local file (None = missing) and whether it is converted."""

    preset: Preset
    paths: dict[str, Path | None]
    converted: bool

    @property
    def ready(self) -> bool:
        return all(p is not None for p in self.paths.values())

    @property
    def missing(self) -> list[str]:
        return [role for role, p in self.paths.items() if p is None]

    @property
    def size(self) -> int:
        return sum(disk_size(p) for p in self.paths.values() if p is not None)


def local_status(preset: Preset) -> LocalStatus:
    paths: dict[str, Path | None] = {}
    for role in WEIGHT_ROLES:
        try:
            paths[role] = resolve(preset, role)
        except CfError:
            paths[role] = None
    return LocalStatus(preset, paths, converted_path(preset) is not None)
