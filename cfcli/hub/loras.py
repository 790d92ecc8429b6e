"""LoRA files on the Hub (`owner/repo/path/in/repo.safetensors`, from `--lora` or a preset's `loras:`): the reference
the Hub code fetches, and where the file is on this machine (never the network)."""

from __future__ import annotations

from pathlib import Path

from cfcli.errors import CfError
from cfcli.hub.cache import cached_path
from cfcli.lora.spec import LoraSpec, hub_parts, is_hub
from cfcli.presets import WeightRef


def lora_ref(spec: LoraSpec) -> WeightRef | None:
    """The Hub file `spec` names, or None for a local file."""
    if not is_hub(spec.source):
        return None
    repo, path = hub_parts(spec.source)
    return WeightRef(repo=repo, file=path)


def resolve_lora(spec: LoraSpec) -> Path:
    """The local file of `spec`: its path, or the Hub file in the cache; a CfError naming the download otherwise."""
    ref = lora_ref(spec)
    if ref is None:
        return Path(spec.source)
    path = cached_path(ref)
    if path is None:
        raise CfError(f"LoRA {spec.source} is neither a file here nor a downloaded Hub file",
                      f"check the path, or run `cf download --lora {spec.source}` first")
    return path
