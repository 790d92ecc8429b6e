"""How the user is told to get a preset's weights, and byte counts as people read them."""

from __future__ import annotations

import shlex

from cfcli.presets import Preset, presets_dir


def download_command(preset: Preset) -> str:
    """The exact `cf download` command that fetches `preset`."""
    src = preset.source
    if src is None or _is_shipped(preset):
        return f"cf download --preset {preset.name}"
    return f"cf download --preset {shlex.quote(str(src))}"


def download_hint(preset: Preset) -> str:
    return f"run `{download_command(preset)}` first"


def _is_shipped(preset: Preset) -> bool:
    src = preset.source
    return src is not None and src.stem == preset.name and src.parent.resolve() == presets_dir().resolve()


def human(n: float) -> str:
    """Bytes as people read them (decimal units, like the Hub's pages)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
