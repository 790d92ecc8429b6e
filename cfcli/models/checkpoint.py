"""Reading the official weight files and loading them strictly into modules built on the meta device.

Only `torch.load(weights_only=True)` (memory-mapped) and safetensors are used, so no pickle code runs and a 5.7 GB
float32 checkpoint is never copied whole into RAM: each tensor is cast to the target dtype/device as it is assigned.
"""

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from cfcli.errors import CfError


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.pt`/`.pth` (pickle, weights only, mmap) or `.safetensors` file, lazily where possible."""
    path = Path(path)
    if not path.is_file():
        raise CfError(f"weights file not found: {path}", "run `cf download` for this preset, or fix the path")
    try:
        if path.suffix == ".safetensors":
            raw = SafetensorsDict(path)
        else:
            try:
                raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
                raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a bad file
        raise CfError(f"could not read weights file {path}: {exc}".splitlines()[0],
                      "the file is truncated or not a weights file; delete it and run `cf download` again") from exc
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(k, str) for k in raw):
        what = "an empty mapping" if isinstance(raw, Mapping) and not raw else f"a {type(raw).__name__}"
        raise CfError(f"weights file {path} holds {what}, not a state dict of named tensors",
                      "check the preset's weights entry names the right file")
    return raw


class SafetensorsDict(Mapping):
    """A safetensors file as a read-only mapping whose tensors are memory-mapped and read one at a time."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="pt", device="cpu")
        self._keys = list(self._file.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def shape(self, key: str) -> tuple[int, ...]:
        """The tensor's shape from the header, without reading its data."""
        return tuple(self._file.get_slice(key).get_shape())

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def generator_state_dict(raw: dict, use_ema: bool) -> dict[str, torch.Tensor]:
    """The DiT tensors of a Causal/Self Forcing checkpoint, keys normalised to the bare WanModel names.

    Picks `generator_ema` or `generator` (falling back to the other when the asked-for one is absent), strips the
    wrapper's leading `model.` and every FSDP `_fsdp_wrapped_module.` segment. A bare state dict passes through.
    """
    order = ("generator_ema", "generator") if use_ema else ("generator", "generator_ema")
    sd = next((raw[k] for k in order if k in raw and isinstance(raw[k], dict)), raw)
    if isinstance(sd, SafetensorsDict) and not any(k.startswith(("model.", "_fsdp")) for k in sd):
        return sd  # already bare (a converted checkpoint): keep it lazy
    if not all(isinstance(k, str) for k in sd):
        raise CfError("the generator checkpoint's weights are not named by strings", "check the generator file")
    out = {}
    for key, value in sd.items():
        key = key.replace("_fsdp_wrapped_module.", "")
        out[key.removeprefix("model.")] = value
    return out


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], *, what: str, dtype: torch.dtype,
                device: torch.device | str) -> nn.Module:
    """Assign `sd` to `module` (built on the meta device or not), requiring exactly its keys and shapes."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shape = sd.shape if isinstance(sd, SafetensorsDict) else (lambda k: tuple(getattr(sd[k], "shape", ())))
    wrong = sorted(k for k in set(expected) & set(sd) if tuple(expected[k].shape) != shape(k))
    if missing or unexpected or wrong:
        detail = "; ".join(f"{name}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''} ({len(keys)})"
                           for name, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("wrong shape", wrong)) if keys)
        raise CfError(f"{what} weights do not match the model ({detail})",
                      "check that the preset's architecture matches the checkpoint, or re-download the file")
    cast = {}
    for key in expected:  # one tensor at a time: a lazy mapping never holds the whole file in RAM
        v = _tensor_like(sd[key], expected[key], key, what)
        cast[key] = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
    module.load_state_dict(cast, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def _tensor_like(value: object, want: torch.Tensor, key: str, what: str) -> torch.Tensor:
    """`value` if it can stand in for the module's tensor `want`: a tensor, floating where `want` is."""
    if not isinstance(value, torch.Tensor):
        raise CfError(f"{what} weights: {key} is a {type(value).__name__}, not a tensor",
                      "the file is not a checkpoint of this model; re-download it")
    if want.is_floating_point() and not value.is_floating_point():
        raise CfError(f"{what} weights: {key} holds {value.dtype} values where floating point weights belong",
                      "the file is not a checkpoint of this model; re-download it")
    return value
