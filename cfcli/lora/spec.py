"""What a user asks for with `--lora FILE[:SCALE]` (or `Session(lora=[...])`, or a preset's `loras:`): a file and a
scale, before anything is read. Torch-free: the CLI parses and makes paths absolute here, on the client side."""

import math
from dataclasses import dataclass
from pathlib import Path

from cfcli.errors import CfError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")  # refused: reading them would unpickle


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and its scale. `source`: a local path (absolute once resolved) or a Hub file
    `owner/repo/path/in/repo.safetensors`."""

    source: str
    scale: float = 1.0

    @property
    def arg(self) -> str:
        """As `--lora` takes it: the scale always written (so a ':' in the path never reads as one), to the last
        digit (it decides the weights)."""
        return f"{self.source}:{self.scale!r}"


def parse(text: "str | LoraSpec | tuple") -> LoraSpec:
    """`FILE`, `FILE:SCALE`, a `(file, scale)` pair or a `LoraSpec`. A path may hold ':': only what follows the last
    one, when it reads as a number, is the scale."""
    if isinstance(text, LoraSpec):
        return text
    if isinstance(text, tuple):
        return _checked(str(text[0]), float(text[1]))
    text = str(text)
    head, sep, tail = text.rpartition(":")
    try:
        scale = float(tail) if sep else None
    except ValueError:
        scale = None
    return _checked(text, 1.0) if scale is None else _checked(head, scale)


def _checked(source: str, scale: float) -> LoraSpec:
    if not source.strip():
        raise CfError("--lora needs a file", "e.g. --lora style.safetensors:0.8")
    if not math.isfinite(scale):
        raise CfError(f"--lora {source}: the scale must be a finite number, got {scale}", "e.g. --lora FILE:0.8")
    return LoraSpec(source, scale)


def is_hub(source: str) -> bool:
    """Whether `source` names a Hub file (`owner/repo/path`) rather than a local one: relative, not found here, and
    of that shape."""
    path = Path(source).expanduser()
    return not path.is_absolute() and not path.exists() and not source.startswith((".", "~")) and \
        source.count("/") >= 2


def hub_parts(source: str) -> tuple[str, str]:
    """(repo, path in the repo) of a Hub source."""
    owner, name, rest = source.split("/", 2)
    return f"{owner}/{name}", rest


def absolute(text: "str | LoraSpec") -> str:
    """`--lora` as given, with a local file made absolute against this process's folder (a job may run in a
    `cf serve` started elsewhere); a Hub file stays as it is."""
    spec = parse(text)
    if is_hub(spec.source):
        return spec.arg
    return LoraSpec(str(Path(spec.source).expanduser().absolute()), spec.scale).arg
