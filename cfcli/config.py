"""User defaults: a YAML file in the standard config folder, overridden by `CF_*` environment variables.

Precedence, highest first: a flag on the command line, its environment variable (`CF_DEVICE`, `CF_DTYPE`,
`CF_CODEC`, `CF_CRF`, `CF_PRESET`, `CF_OUTPUT_DIR`), the config file, then the preset or built-in default.
The file is `$CF_CONFIG`, else `$XDG_CONFIG_HOME/cfcli/config.yaml` (default `~/.config/cfcli/config.yaml`), e.g.

    device: cuda
    codec: h265
    crf: 20
    preset: chunkwise
    output_dir: ~/Videos/cf

Unknown keys are refused, so a typo never silently does nothing.
"""

import os
from pathlib import Path

import yaml

from cfcli.errors import CfError

KEYS = {"device": str, "dtype": str, "codec": str, "crf": int, "preset": str, "output_dir": str}
# Which command options each key gives a default to (click's default_map: flag > env > this > default).
COMMAND_KEYS = {"generate": ("device", "dtype", "codec", "crf"), "extend": ("device", "dtype", "codec", "crf"),
                "live": ("device", "dtype", "codec", "crf"), "bench": ("device", "dtype")}


def config_path() -> Path:
    if os.environ.get("CF_CONFIG"):
        return Path(os.environ["CF_CONFIG"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "cfcli" / "config.yaml"


def env_name(key: str) -> str:
    return f"CF_{key.upper()}"


def read_config(path: Path | None = None) -> dict:
    """The config file's settings, checked; {} when there is no file."""
    path = path or config_path()
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CfError(f"cannot read the config file {path}: {exc}".splitlines()[0], "fix or remove the file") from exc
    if not isinstance(data, dict):
        raise CfError(f"the config file {path} is not a mapping of keys", f"keys: {', '.join(KEYS)}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise CfError(f"unknown keys in {path}: {', '.join(map(str, unknown))}", f"known keys: {', '.join(KEYS)}")
    for key, value in data.items():
        if not isinstance(value, KEYS[key]) or isinstance(value, bool):
            raise CfError(f"{path}: {key} must be a {KEYS[key].__name__}, got {value!r}")
    return data


def default_map(config: dict) -> dict:
    """click's `default_map` for the commands: each command's options that the config sets."""
    return {cmd: {k: config[k] for k in keys if k in config} for cmd, keys in COMMAND_KEYS.items()}


def setting(key: str, config: dict) -> str | None:
    """A setting no flag gave: its environment variable, else the config file, else None."""
    value = os.environ.get(env_name(key)) or config.get(key)
    return str(value) if value is not None else None


def output_dir() -> Path:
    """Where default output paths go: CF_OUTPUT_DIR, else the config file's `output_dir`, else ./outputs."""
    return Path(setting("output_dir", read_config()) or "outputs").expanduser()
