"""The models a preset describes: its `architecture` read into configs once, the VAE family looked up, modules built.

Everything that needs a model config or module for a preset asks here (the engine, `cf bench`, the FLOP model, the
memory planner, the prompt encoder), so a new VAE family is one `VAE_FAMILIES` entry: a config class with
`temporal_stride`, `spatial_stride` and `z_dim`, and a module class with `encode` and `stream_decoder`.
`architecture` is the preset's mapping, already checked by `cfcli.preset_schema` when the preset loaded.
"""

from dataclasses import dataclass

import torch
from torch import nn

from cfcli.models.dit import CausalWanDiT, DiTConfig
from cfcli.models.geometry import Geometry
from cfcli.models.t5 import T5Config, UMT5Encoder
from cfcli.models.vae import VAEConfig, WanVAE
from cfcli.preset_schema import VAE_FAMILY_KEY

DEFAULT_VAE_FAMILY = "wan2.1"
VAE_FAMILIES: dict[str, tuple[type, type[nn.Module]]] = {"wan2.1": (VAEConfig, WanVAE)}  # family -> (config, module)


@dataclass(frozen=True)
class ModelConfigs:
    dit: DiTConfig
    vae: VAEConfig  # the config class of `vae_family`
    text_encoder: T5Config
    vae_family: str = DEFAULT_VAE_FAMILY

    @property
    def geometry(self) -> Geometry:
        return Geometry.of(self.dit, self.vae)


@dataclass
class Models:
    dit: CausalWanDiT
    vae: nn.Module  # the family's module class (`WanVAE` for wan2.1)
    configs: ModelConfigs


def model_configs(architecture: dict | None) -> ModelConfigs:
    """The configs a preset's `architecture` mapping describes (parts left out take the released sizes)."""
    parts = {part: dict(values or {}) for part, values in (architecture or {}).items()}
    vae = parts.get("vae", {})
    family = vae.pop(VAE_FAMILY_KEY, DEFAULT_VAE_FAMILY)
    vae_config, _ = VAE_FAMILIES[family]
    dit = parts.get("dit", {})
    if "patch_size" in dit:
        dit["patch_size"] = tuple(dit["patch_size"])  # YAML lists; a tuple keeps the config hashable
    return ModelConfigs(DiTConfig(**dit), vae_config(**vae), T5Config(**parts.get("text_encoder", {})), family)


def build_models(preset, device: str | torch.device = "meta") -> Models:
    """The DiT and VAE of `preset` (a `cfcli.presets.Preset`, or its `ModelConfigs`), on `device` (meta: no memory;
    load weights by assignment, `cfcli.models.checkpoint.load_strict`)."""
    configs = preset if isinstance(preset, ModelConfigs) else preset.configs
    with torch.device(device):
        dit = CausalWanDiT(configs.dit)
    return Models(dit, build_vae(configs, device), configs)


def build_vae(configs: ModelConfigs, device: str | torch.device = "meta") -> nn.Module:
    """The VAE alone (the memory planner traces its decoder; the FLOP model counts it)."""
    _, vae_module = VAE_FAMILIES[configs.vae_family]
    with torch.device(device):
        return vae_module(configs.vae)


def build_text_encoder(configs: ModelConfigs, device: str | torch.device = "meta") -> UMT5Encoder:
    with torch.device(device):
        return UMT5Encoder(configs.text_encoder)
