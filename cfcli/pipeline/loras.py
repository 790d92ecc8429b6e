"""The LoRAs a run merges, found on this machine and checked before any weights load: the preset's (`loras:`) then
those asked for (`--lora`, `Session(lora=...)`), each a local file or a Hub file in the Hugging Face cache.

What a clip records of each (`facts`): the file as given, its name, its sha256 and its scale; `cf info` remakes the
clip from them (`--lora FILE:SCALE`).
"""

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cfcli import hub
from cfcli.converted_check import file_sha256
from cfcli.lora.files import LoraFile
from cfcli.lora.merge import Adapters
from cfcli.lora.spec import LoraSpec, is_hub, parse
from cfcli.models.dit import DiTConfig
from cfcli.presets import Preset


@dataclass(frozen=True)
class Adapter:
    """A LoRA found and checked: what was asked (`spec`), the local file, whether the preset lists it."""

    spec: LoraSpec
    path: Path
    lora: LoraFile = field(compare=False, repr=False)
    preset: bool = False

    @functools.cached_property
    def sha256(self) -> str:
        return file_sha256(self.path)

    def facts(self) -> dict:
        """What a clip's metadata records of it."""
        return {"file": self.spec.source, "name": self.path.name, "sha256": self.sha256, "scale": self.spec.scale} \
            | ({"preset": True} if self.preset else {})


def local(spec: LoraSpec) -> LoraSpec:
    """A local file's spec with its path absolute (a Hub file as it is)."""
    return spec if is_hub(spec.source) else LoraSpec(str(Path(spec.source).expanduser().absolute()), spec.scale)


def find(spec: LoraSpec, cfg: DiTConfig, preset: bool = False) -> Adapter:
    path = hub.resolve_lora(spec)
    return Adapter(spec, path, LoraFile(path, cfg, label=spec.source), preset)


def adapters_for(p: Preset, given: "Iterable | str | Path | None") -> tuple[Adapter, ...]:
    """The preset's LoRAs then `given` (`FILE[:SCALE]` strings, (file, scale) pairs or `LoraSpec`s), each found and
    checked against the preset's DiT (a CfError before any weights load)."""
    if isinstance(given, (str, Path, LoraSpec)):  # one LoRA, not a sequence of characters
        given = [given]
    cfg = p.configs.dit
    return (*(find(s, cfg, preset=True) for s in p.loras), *(find(local(parse(s)), cfg) for s in given or ()))


def pairs(adapters: Iterable[Adapter]) -> Adapters:
    """(file, scale) of each, what `cfcli.lora.merge` takes."""
    return [(a.lora, a.spec.scale) for a in adapters]
