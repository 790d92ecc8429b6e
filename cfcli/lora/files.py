"""One LoRA file: read from safetensors (never unpickled), its keys grouped by the DiT parameter they change,
checked against the parameters' shapes — from the model config, on the meta device, before any weights load — and its
deltas computed in float32.

Precision: a low-rank delta is `up @ down` in float32, times `alpha / rank` when the file gives an alpha (else 1).
"""

import functools
import math
import re
from pathlib import Path

import torch
from torch import Tensor

from cfcli.errors import CfError
from cfcli.lora.keys import Grouped, block_index, group, split
from cfcli.lora.spec import PICKLE_SUFFIXES
from cfcli.models.dit import CausalWanDiT, DiTConfig

KNOWN_BASES = {(1536, 30): "Wan2.1 1.3B", (5120, 40): "Wan2.1 14B"}  # (width, blocks) -> name, for messages
LAYOUTS = ("diffusion_model.blocks.N.self_attn.q.lora_down.weight (Wan/ComfyUI), "
           "transformer.blocks.N.attn1.to_q.lora_A.weight (PEFT/diffusers) or "
           "lora_unet_blocks_N_self_attn_q.lora_down.weight (kohya), with .alpha, .diff and .diff_b")
SELF_ATTN = re.compile(r"(?:self_attn[._][qkvo]|attn1\.to_(?:q|k|v|out\.0))$")  # their width is the DiT's
SHOWN = 3  # keys named in a message


@functools.lru_cache(maxsize=8)
def parameter_shapes(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Every DiT parameter's shape for `cfg`, from a DiT built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        dit = CausalWanDiT(cfg)
    return {name: tuple(p.shape) for name, p in dit.named_parameters()}


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (f" … ({len(keys)} in all)" if len(keys) > SHOWN else "")


def describe_base(width: int, blocks: int) -> str:
    known = KNOWN_BASES.get((width, blocks))
    return f"a DiT {width} wide with {blocks} blocks" + (f" ({known})" if known else "")


class LoraFile:
    """A LoRA file checked against a DiT config (`cfg`); `label` names it in messages (the file as given)."""

    def __init__(self, path: Path, cfg: DiTConfig, label: str | None = None):
        self.path, self.cfg = Path(path), cfg
        self.label = label or self.path.name
        self._file = self._open()
        keys = list(self._file.keys())
        if not keys:
            raise CfError(f"LoRA {self.label} holds no tensors", f"expected {LAYOUTS}")
        self.shapes = parameter_shapes(cfg)
        self._pinned: dict[str, Tensor] = {}  # `pin`
        self.grouped: Grouped = group(keys, self.shapes)
        self._check_base(keys)
        self._check_keys(keys)
        self.changes = self._plan()  # parameter -> (target, "weight" | "bias")
        self._check_shapes()

    def _open(self):
        from safetensors import safe_open

        if not self.path.is_file():
            raise CfError(f"LoRA file not found: {self.path}", "check the path (or give a Hub file owner/repo/path)")
        with open(self.path, "rb") as f:
            head = f.read(8)
        by_name = self.path.suffix.lower() in PICKLE_SUFFIXES
        if by_name or head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":  # pickle protocol 2+, or a torch zip
            raise CfError(f"LoRA {self.label} is a pickle file ({self.path.suffix if by_name else 'by its content'}): "
                          "cfcli never unpickles a LoRA, since unpickling can run code",
                          "use the .safetensors release of this LoRA, or convert it with a tool you trust")
        try:
            return safe_open(str(self.path), framework="pt", device="cpu")
        except Exception as exc:  # noqa: BLE001 - any parse failure means it is not a safetensors file
            raise CfError(f"LoRA {self.label} is not a safetensors file: {exc}".splitlines()[0],
                          f"expected a .safetensors LoRA: {LAYOUTS}") from exc

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file.get_slice(key).get_shape())

    def tensor(self, key: str) -> Tensor:
        return self._pinned[key] if key in self._pinned else self._file.get_tensor(key)

    def pin(self) -> None:
        """Read the tensors now into page-locked host memory, so that deltas computed on a GPU later (a live swap,
        on the thread that generates) neither read the file nor wait for their copies on the host."""
        keys = [key for parts in self.grouped.targets.values() for key in parts.values()]
        self._pinned = {key: self._file.get_tensor(key).pin_memory() for key in keys}

    # --- checks (before any weights load) ------------------------------------------------------------------------

    def _check_base(self, keys: list[str]) -> None:
        """Refuse a LoRA made for another model of the family (another width or more blocks), saying which."""
        layout, cfg = self.grouped.layout, self.cfg
        blocks = [b for k in keys if (b := block_index(k, layout)) is not None]
        widths = set()
        for key in keys:
            found = split(key)
            if found and found[1] in ("down", "up", "diff") and SELF_ATTN.search(found[0]):
                shape = self.shape(key)
                if len(shape) == 2:
                    widths.add(shape[1] if found[1] != "up" else shape[0])
        width = max(widths - {cfg.dim}, default=cfg.dim)
        count = max(max(blocks, default=-1) + 1, cfg.num_layers)
        if width != cfg.dim or count != cfg.num_layers:
            raise CfError(f"LoRA {self.label} was made for another base model: {describe_base(width, count)}; this "
                          f"preset's DiT is {describe_base(cfg.dim, cfg.num_layers)}",
                          "use a LoRA trained on this preset's base model (Wan2.1-T2V-1.3B for the shipped presets)")

    def _check_keys(self, keys: list[str]) -> None:
        unknown = self.grouped.unknown
        if not self.grouped.targets:
            raise CfError(f"LoRA {self.label} changes nothing in the DiT: none of its {len(keys)} keys names a part of "
                          f"it ({_listed(keys)})", f"expected {LAYOUTS}")
        if unknown:
            raise CfError(f"LoRA {self.label} has {len(unknown)} of {len(keys)} keys that match no part of the DiT "
                          f"({self.grouped.layout} layout): {_listed(unknown)}",
                          "cfcli merges LoRA pairs, alphas and diffs of the Wan2.1 T2V DiT's parameters; a LoRA with "
                          "other parts (image conditioning, LyCORIS forms) cannot be applied exactly")

    def _plan(self) -> dict[str, tuple[str, str]]:
        changes = {}
        for target, parts in self.grouped.targets.items():
            if {"down", "up", "diff"} & set(parts):
                changes[self._weight(target)] = (target, "weight")
            if "diff_b" in parts:
                changes[f"{target}.bias"] = (target, "bias")
            if not {"down", "up", "diff", "diff_b"} & set(parts):
                raise CfError(f"LoRA {self.label}: {target} has only {', '.join(parts)}",
                              "the file is incomplete: a LoRA needs both its down and up weights")
        return changes

    def _weight(self, target: str) -> str:
        """The parameter a target's weight changes: `target.weight` for a module, else the parameter itself."""
        return f"{target}.weight" if f"{target}.weight" in self.shapes else target

    def _check_shapes(self) -> None:
        wrong = [problem for target, parts in self.grouped.targets.items() if (problem := self._wrong(target, parts))]
        if wrong:
            raise CfError(f"LoRA {self.label} does not fit the DiT: {'; '.join(wrong[:SHOWN])}"
                          + (f" … ({len(wrong)} in all)" if len(wrong) > SHOWN else ""),
                          "use a LoRA made for this preset's model (its sizes are in the preset's architecture)")

    def _wrong(self, target: str, parts: dict[str, str]) -> str | None:
        """What is wrong with one target's tensors (`key is [shape], expected [shape]`), or None."""
        weight = self.shapes[self._weight(target)]
        shape = {part: self.shape(key) for part, key in parts.items()}
        if ("down" in shape) != ("up" in shape):
            have, miss = ("down", "up") if "down" in shape else ("up", "down")
            return f"{parts[have]} has no {miss} weight beside it"
        if "down" in shape:
            rank, rest = shape["down"][0] if shape["down"] else 0, math.prod(weight[1:])
            if len(weight) < 2 or math.prod(shape["down"]) != rank * rest or shape["up"][0] != weight[0] \
                    or math.prod(shape["up"]) != weight[0] * rank:
                return (f"{parts['down']} {list(shape['down'])} and {parts['up']} {list(shape['up'])} are not a "
                        f"low-rank pair for {target} {list(weight)}")
        if "alpha" in shape and math.prod(shape["alpha"]) != 1:
            return f"{parts['alpha']} is {list(shape['alpha'])}, expected one number"
        if "diff" in shape and shape["diff"] != weight:
            return f"{parts['diff']} is {list(shape['diff'])}, expected {list(weight)}"
        bias = self.shapes.get(f"{target}.bias")
        if "diff_b" in shape and shape["diff_b"] != bias:
            return f"{parts['diff_b']} is {list(shape['diff_b'])}, expected " + (f"{list(bias)}" if bias else
                                                                                  f"none: {target} has no bias")
        return None

    # --- deltas --------------------------------------------------------------------------------------------------

    def delta(self, param: str, device: torch.device | str = "cpu") -> Tensor:
        """The float32 change this file makes to `param` (one of `changes`), at scale 1, computed on `device`."""
        target, kind = self.changes[param]
        parts = self.grouped.targets[target]

        def read(part: str) -> Tensor:  # copied, then widened, on `device`
            return self.tensor(parts[part]).to(device, non_blocking=True).to(torch.float32)

        if kind == "bias":
            return read("diff_b")
        shape, delta = self.shapes[param], None
        if "down" in parts:  # in place after the product: one weight-sized float32 tensor at a time
            down, up = read("down"), read("up")
            rank = down.shape[0]
            delta = (up.reshape(shape[0], rank) @ down.reshape(rank, -1)).reshape(shape)
            if "alpha" in parts:
                delta.mul_(float(self.tensor(parts["alpha"]).reshape(())) / rank)  # read on the host: no sync
        if "diff" in parts:
            delta = read("diff") if delta is None else delta.add_(read("diff"))
        return delta
