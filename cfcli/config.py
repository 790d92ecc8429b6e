"""User defaults: a YAML file in the standard config folder, overridden by `CF_*` environment variables.

Precedence, highest first: a flag on the command line, its environment variable (`CF_DEVICE`, `CF_DTYPE`,
`CF_CODEC`, `CF_CRF`, `CF_PRESET`, `CF_OUTPUT_DIR`), the config file, then the preset or built-in default.
The file is `$CF_CONFIG`, else `$XDG_CONFIG_HOME/cfcli/config.yaml` (default `~/.config/cfcli/config.yaml`), e.g.

    device: cuda
    codec: h265
    crf: 20
    preset: chunkwise
    output_dir: ~/Videos/cf

Unknown keys are refused, so a typo never silently does nothing. A file that cannot be used (not text, not YAML, not a
mapping, an unknown key) or a value of the wrong kind is refused only where a value of the file is about to be used:
`--help`, `cf info` and `cf cache` always work, and a command refuses a bad `crf` only when no `--crf`/`CF_CRF` wins
over it. The refusal names the file, the key and what it expects.
"""

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import yaml

from cfcli.errors import CfError

KEYS = {"device": str, "dtype": str, "codec": str, "crf": int, "preset": str, "output_dir": str}
# What each key expects, for the message that refuses a bad value.
EXPECTED = {"device": "a device name: cpu, cuda or cuda:N", "dtype": "float32, bfloat16 or float16",
            "codec": "a codec name: h264, h265, ffv1, vp9, av1 or gif", "crf": "a whole number from 0 to 51",
            "preset": "a preset name or the path of a preset YAML file", "output_dir": "a folder path"}
# Which command options each key gives a default to (click's default_map: flag > env > this > default).
COMMAND_KEYS = {"generate": ("device", "dtype", "codec", "crf"), "extend": ("device", "dtype", "codec", "crf"),
                "live": ("device", "dtype", "codec", "crf"), "bench": ("device", "dtype")}
HINT = "fix or remove that line of the config file"
# The variables a client's settings come from (`client_environment`): the CF_* defaults and where the file is.
CLIENT_VARIABLES = (*(f"CF_{k.upper()}" for k in KEYS), "CF_CONFIG", "XDG_CONFIG_HOME")
_environment: ContextVar[Mapping[str, str] | None] = ContextVar("cf_environment", default=None)


def environ() -> Mapping[str, str]:
    """The environment settings are read from: this process's, or the client's a `cf serve` job runs for."""
    given = _environment.get()
    return os.environ if given is None else given


def client_environment() -> dict[str, str]:
    """This process's settings variables, paths made absolute: what a `cf serve` job needs to read settings as this
    process would (`environment`)."""
    env = {k: os.environ[k] for k in CLIENT_VARIABLES if os.environ.get(k)}
    for k in ("CF_OUTPUT_DIR", "CF_CONFIG", "XDG_CONFIG_HOME"):
        if k in env:
            env[k] = str(Path(env[k]).expanduser().absolute())
    if "CF_PRESET" in env and Path(env["CF_PRESET"]).suffix in (".yaml", ".yml"):
        env["CF_PRESET"] = str(Path(env["CF_PRESET"]).expanduser().absolute())
    return env


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """Settings read from `env` (a client's `client_environment`) instead of this process's, in this context."""
    token = _environment.set(dict(env))
    try:
        yield
    finally:
        _environment.reset(token)


class Config(dict):
    """The config file's good settings, and what is wrong with the rest: `problems` by key, `broken` for the file as
    a whole. Reading a setting (`setting`, a command's default) raises the problem it would use."""

    def __init__(self, values: dict | None = None, problems: dict[str, CfError] | None = None,
                 broken: CfError | None = None):
        super().__init__(values or {})
        self.problems, self.broken = problems or {}, broken

    def check(self, key: str) -> None:
        """Raise the CfError that stops `key`'s value from being used, if any."""
        if self.broken is not None:
            raise self.broken
        if key in self.problems:
            raise self.problems[key]


def config_path() -> Path:
    env = environ()
    if env.get("CF_CONFIG"):
        return Path(env["CF_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "cfcli" / "config.yaml"


def env_name(key: str) -> str:
    return f"CF_{key.upper()}"


def read_config(path: Path | None = None) -> Config:
    """The config file's settings, each checked; an empty `Config` when there is no file. Never raises: what is wrong
    is kept in the `Config` and raised when a bad value is about to be used (`Config.check`)."""
    path = path or config_path()
    try:
        if not path.is_file():
            return Config()
        raw = path.read_bytes()
    except OSError as exc:
        return Config(broken=CfError(f"cannot read the config file {path}: {exc.strerror or exc}",
                                     "fix its permissions, or remove it"))
    try:
        text = raw.decode("utf-8-sig")
        if "\0" in text:
            raise UnicodeError
    except UnicodeError:
        return Config(broken=CfError(f"the config file {path} is not a text file (not UTF-8 YAML)",
                                     "write it as YAML text (e.g. `crf: 20`), or remove it"))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        return Config(broken=CfError(f"cannot read the config file {path}: it is not valid YAML{line}",
                                     "fix or remove the file"))
    if data is None:
        return Config()
    if not isinstance(data, dict):
        return Config(broken=CfError(f"the config file {path} is not a mapping of keys",
                                     f"write `key: value` lines; keys: {', '.join(KEYS)}"))
    unknown = sorted(map(str, set(data) - set(KEYS)))
    if unknown:
        return Config(broken=CfError(f"unknown keys in the config file {path}: {', '.join(unknown)}",
                                     f"known keys: {', '.join(KEYS)}"))
    values, problems = {}, {}
    for key, value in data.items():
        if bad_value(key, value):
            problems[key] = CfError(f"the config file {path}: {key} must be {EXPECTED[key]}, got {value!r}", HINT)
        else:
            values[key] = value
    return Config(values, problems)


def bad_value(key: str, value) -> bool:
    if not isinstance(value, KEYS[key]) or isinstance(value, bool):
        return True
    if key == "crf":
        return not 0 <= value <= 51
    if key == "dtype":
        return value not in ("float32", "bfloat16", "float16")
    return not value.strip()


def default_map(config: Config) -> dict:
    """click's `default_map` for the commands: each command's options that the config sets. A bad value (or a file
    that cannot be used) is a default that raises its CfError when click asks for it, which it does only when no flag
    or environment variable gave the option (never for `--help`)."""
    def refuse(key: str):
        def raise_it():
            config.check(key)
        return raise_it

    keys = KEYS if config.broken is not None else config.problems
    return {cmd: {k: (refuse(k) if k in keys else config[k]) for k in wanted if k in config or k in keys}
            for cmd, wanted in COMMAND_KEYS.items()}


def setting(key: str, config: Config | dict) -> str | None:
    """A setting no flag gave: its environment variable, else the config file (a CfError if its value there is bad,
    or the file cannot be used), else None."""
    env = environ()
    if env.get(env_name(key)):
        return env[env_name(key)]
    if isinstance(config, Config):
        config.check(key)
    value = config.get(key)
    return str(value) if value is not None else None


def output_dir() -> Path:
    """Where default output paths go: CF_OUTPUT_DIR, else the config file's `output_dir`, else ./outputs."""
    return Path(setting("output_dir", read_config()) or "outputs").expanduser()
