"""Presets: strict YAML files naming a model, its sampling settings and the weight files it needs.

A preset is found by name (`presets/<name>.yaml` shipped with cfcli) or by a path to a YAML file; relative `path`
entries in `weights` are resolved against the YAML file's folder. Unknown keys are rejected so a typo never silently
falls back to a default.
"""

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from cfcli.config import read_config, setting
from cfcli.errors import CfError
from cfcli.lora.spec import LoraSpec

if TYPE_CHECKING:  # the models pull in torch: imported where used
    from cfcli.models.build import ModelConfigs
    from cfcli.models.geometry import Geometry

WEIGHT_ROLES = ("generator", "vae", "text_encoder", "tokenizer")
MODES = {"framewise": 1, "chunkwise": 3}
SAMPLERS = ("causal", "rolling")


@dataclass(frozen=True)
class WeightRef:
    """One weight file or folder: on the Hugging Face Hub (`repo` + `file`/`folder`) or a local `path`."""

    repo: str | None = None
    file: str | None = None
    folder: str | None = None
    path: Path | None = None
    revision: str | None = None

    @property
    def label(self) -> str:
        return str(self.path) if self.path else f"{self.repo}/{self.file or self.folder}"


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    mode: str
    steps: tuple[int, ...]
    first_block_steps: tuple[int, ...] | None
    timestep_shift: float
    use_ema: bool
    height: int
    width: int
    frames: int
    fps: int
    local_attn_frames: int
    sink_frames: int
    weights: dict[str, WeightRef]
    architecture: dict = field(default_factory=dict)
    sampler: str = "causal"
    horizon_frames: int = 21  # latent frames the model was trained on; longer videos roll the KV cache
    loras: tuple[LoraSpec, ...] = ()  # merged into the DiT: a Hub file `owner/repo/path` or an absolute path
    source: Path | None = None

    @property
    def block_frames(self) -> int:
        """Latent frames denoised together per autoregressive step: 1 frame-wise, 3 chunk-wise."""
        return MODES[self.mode]

    @property
    def configs(self) -> "ModelConfigs":
        """The model configs its `architecture` describes (`cfcli.models.build.model_configs`; imports torch)."""
        from cfcli.models.build import model_configs

        return model_configs(self.architecture)

    @property
    def geometry(self) -> "Geometry":
        """Strides, patch and lengths of its models (`cfcli.models.geometry.Geometry`)."""
        return self.configs.geometry


def presets_dir() -> Path:
    """Shipped presets: inside the installed package, or the repository's top-level `presets/` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "presets", here.parent / "presets"):
        if candidate.is_dir():
            return candidate
    return here / "presets"


def shipped_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def load_preset(name_or_path: str | Path, *, models: bool = True) -> Preset:
    """The preset called `name_or_path`, or the one in that YAML file.

    `models=False` (listing and downloading) skips the checks against the model configs, which import torch; every
    command that builds a model loads its preset with them."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = presets_dir() / f"{text}.yaml"
        if not path.is_file():
            raise CfError(f"unknown preset {text!r}",
                          f"use one of: {', '.join(shipped_presets())}, or a path to a preset YAML file")
    if not path.is_file():
        raise CfError(f"preset file not found: {path}", "check the path")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CfError(f"preset {path} is not a UTF-8 text file", "give a YAML preset file") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise CfError(f"could not read preset {path}: {exc}".splitlines()[0], "fix the YAML file") from exc
    if data is None:
        raise CfError(f"preset {path} is empty", "see presets/framewise.yaml for the format")
    return parse_preset(data, path, models=models)


def parse_preset(data: object, path: Path, *, models: bool = True) -> Preset:
    """A Preset from loaded YAML, after every value was checked (all problems reported in one message)."""
    where = f"preset {path}"
    if not isinstance(data, dict):
        raise CfError(f"{where} is not a mapping of keys", "see presets/framewise.yaml for the format")
    known = {f.name for f in fields(Preset)} - {"source"}
    unknown = sorted(str(k) for k in data if k not in known)
    optional = {"architecture", "sampler", "horizon_frames", "loras"}
    required = sorted(k for k in known if k not in data and k not in optional)
    if unknown or required:
        problems = ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {required}"] if required else [])
        raise CfError(f"{where}: {'; '.join(problems)}", "see presets/framewise.yaml for the format")
    problems = check_values(data, architecture_configs(data.get("architecture")) if models else None)
    if problems:
        raise CfError(f"{where}: {'; '.join(problems)}", "fix the preset (see presets/framewise.yaml for the format)")
    data = dict(data)
    data["weights"] = {role: _weight_ref(data["weights"][role], path.parent) for role in WEIGHT_ROLES}
    data["steps"] = tuple(data["steps"])
    if data["first_block_steps"] is not None:
        data["first_block_steps"] = tuple(data["first_block_steps"])
    data["architecture"] = {part: dict(values or {}) for part, values in (data.get("architecture") or {}).items()}
    data["loras"] = tuple(_lora_spec(entry, path.parent) for entry in data.get("loras") or ())
    return Preset(**data, source=path)


def check_values(data: dict, configs: dict[str, type] | None) -> list[str]:
    """Every problem with the preset's values, worded `key must be …, got …`."""
    from cfcli import preset_schema as schema

    problems = schema.Problems()
    if not isinstance(data["mode"], str) or data["mode"] not in MODES:
        problems.add("mode", "framewise or chunkwise", data["mode"])
    if not isinstance(data.get("sampler", "causal"), str) or data.get("sampler", "causal") not in SAMPLERS:
        problems.append(f"unknown sampler {data['sampler']!r} (use one of: {', '.join(SAMPLERS)})")
    schema.check_steps(data, "steps", problems)
    schema.check_steps(data, "first_block_steps", problems)
    schema.check_scalars(data, MODES.get(data["mode"], 1) if isinstance(data["mode"], str) else 1, problems)
    multiple = 1
    if configs is not None:
        arch, before = data.get("architecture"), len(problems)
        schema.check_architecture(arch, configs, problems)
        schema.check_vae_family(arch, vae_families(), problems)
        schema.check_geometry(arch, configs, problems)
        if len(problems) == before:
            multiple = size_multiple(arch)
    schema.check_size(data, multiple, problems)
    schema.check_weights(data["weights"], problems, WEIGHT_ROLES)
    schema.check_loras(data.get("loras"), problems)
    return problems


def architecture_configs(arch: object) -> dict[str, type]:
    """The config dataclass each `architecture` part fills, the VAE's by its family (the default one when the family
    is unknown: `check_vae_family` reports that). Imported here: the models pull in torch."""
    from cfcli.models.build import DEFAULT_VAE_FAMILY, VAE_FAMILIES
    from cfcli.models.dit import DiTConfig
    from cfcli.models.t5 import T5Config
    from cfcli.preset_schema import VAE_FAMILY_KEY

    vae = arch.get("vae") if isinstance(arch, dict) else None
    family = vae.get(VAE_FAMILY_KEY) if isinstance(vae, dict) else None
    vae_config, _ = VAE_FAMILIES.get(family if isinstance(family, str) else "", VAE_FAMILIES[DEFAULT_VAE_FAMILY])
    return {"dit": DiTConfig, "vae": vae_config, "text_encoder": T5Config}


def vae_families() -> tuple[str, ...]:
    from cfcli.models.build import VAE_FAMILIES

    return tuple(VAE_FAMILIES)


def size_multiple(arch: object) -> int:
    """Pixels per token side of the models `arch` describes (`Geometry.size_multiple`)."""
    from cfcli.models.build import model_configs

    return model_configs(arch).geometry.size_multiple


def _weight_ref(entry: dict, base: Path) -> WeightRef:
    """An entry `check_weights` accepted."""
    if "path" in entry:
        return WeightRef(path=(base / Path(entry["path"]).expanduser()).resolve())
    return WeightRef(repo=entry["repo"], file=entry.get("file"), folder=entry.get("folder"),
                     revision=entry.get("revision"))


def _lora_spec(entry: dict, base: Path) -> LoraSpec:
    """An entry `check_loras` accepted."""
    source = f"{entry['repo']}/{entry['file']}" if "repo" in entry else \
        str((base / Path(entry["path"]).expanduser()).resolve())
    return LoraSpec(source, float(entry.get("scale", 1.0)))


MODE_PRESETS = ("framewise", "chunkwise", "longvideo", "self-forcing")  # the shipped presets `--mode` picks


def preset_name(preset: str | None, mode: str | None, steps: int | None) -> str:
    """A preset given wins; else mode/steps pick a shipped preset; else CF_PRESET, the config file, framewise."""
    if preset is None and mode is None and steps is None:
        preset = setting("preset", read_config())
    if preset is not None:
        if mode is not None or steps is not None:
            raise CfError("--preset cannot be combined with --mode/--steps", "use one or the other")
        return str(preset)
    mode = mode or "framewise"
    if mode not in MODE_PRESETS:
        raise CfError(f"unknown mode {mode!r}", f"use {', '.join(MODE_PRESETS[:-1])} or {MODE_PRESETS[-1]}")
    if steps in (None, 4):
        return mode
    if mode != "framewise" or steps not in (1, 2):
        raise CfError(f"no {steps}-step {mode} model", "frame-wise has 4, 2 and 1 steps; chunk-wise 4")
    return f"framewise-{steps}step"
