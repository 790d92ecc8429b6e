"""The LoRA file layouts, mapped onto the DiT's own parameter names (`blocks.3.self_attn.q`, `ffn.0`, `head.head`).

A key is a prefix, a module path and a part:

- Wan / ComfyUI: `diffusion_model.blocks.3.self_attn.q.lora_down.weight` (`lora_up.weight`, `.alpha`; `lora_A` /
  `lora_B` too), full-weight diffs `...q.diff` and bias diffs `...q.diff_b`: the official names.
- PEFT / diffusers: `transformer.blocks.3.attn1.to_q.lora_A.weight` (`lora_B.weight`; `lora_B.bias` is a bias diff):
  diffusers' module names (`DIFFUSERS_BLOCK`, `DIFFUSERS_TOP`), renamed here.
- kohya / musubi-tuner: `lora_unet_blocks_3_self_attn_q.lora_down.weight`: the official names with `_` for `.`.

A file is one layout (`layout_of`); every key must map onto a parameter of the DiT, or the file is refused naming the
keys that do not (`group`): nothing is dropped silently.
"""

import re
from dataclasses import dataclass

PARTS = {"lora_down.weight": "down", "lora_A.weight": "down", "lora_up.weight": "up", "lora_B.weight": "up",
         "lora_B.bias": "diff_b", "alpha": "alpha", "diff": "diff", "diff_b": "diff_b"}
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.")
KOHYA = "lora_unet_"

# diffusers' WanTransformer3DModel names -> the official ones (its `norm2` is the official, affine `norm3`).
DIFFUSERS_BLOCK = {"attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
                   "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q",
                   "attn1.norm_k": "self_attn.norm_k", "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k",
                   "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q",
                   "attn2.norm_k": "cross_attn.norm_k", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
                   "norm2": "norm3", "scale_shift_table": "modulation"}
DIFFUSERS_TOP = {"condition_embedder.text_embedder.linear_1": "text_embedding.0",
                 "condition_embedder.text_embedder.linear_2": "text_embedding.2",
                 "condition_embedder.time_embedder.linear_1": "time_embedding.0",
                 "condition_embedder.time_embedder.linear_2": "time_embedding.2",
                 "condition_embedder.time_proj": "time_projection.1", "proj_out": "head.head",
                 "scale_shift_table": "head.modulation", "patch_embedding": "patch_embedding"}
DIFFUSERS_MARK = re.compile(r"(?:^|\.)(?:attn1|attn2|ffn\.net|condition_embedder|proj_out|scale_shift_table)(?:\.|$)")
BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


@dataclass
class Grouped:
    """A file's keys by the DiT module (or parameter) they change: `targets[name][part]` is the key in the file;
    `unknown` the keys that map onto nothing."""

    layout: str
    targets: dict[str, dict[str, str]]
    unknown: list[str]


def targets_of(params: "set[str] | dict") -> set[str]:
    """What a key may change: every module with a `weight`, and every parameter itself (`blocks.0.modulation`)."""
    return {p.removesuffix(".weight") for p in params if p.endswith(".weight")} | set(params)


def split(key: str) -> tuple[str, str] | None:
    """(module path, part) of a key, its layout prefix left on; None without a known part."""
    for suffix, part in PARTS.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], part
    return None


def strip_prefix(module: str) -> str:
    return next((module[len(p):] for p in PREFIXES if module.startswith(p)), module)


def layout_of(keys: list[str]) -> str:
    if keys and all(k.startswith(KOHYA) for k in keys):
        return "kohya"
    modules = [strip_prefix(s[0]) for k in keys if (s := split(k))]
    return "diffusers" if any(DIFFUSERS_MARK.search(m) for m in modules) else "wan"


def official(module: str, layout: str, kohya: dict[str, str]) -> str:
    """The official name of a module path in `layout` (as written when it has none)."""
    if layout == "kohya":
        return kohya.get(module.removeprefix(KOHYA), module)
    module = strip_prefix(module)
    if layout != "diffusers":
        return module
    block = BLOCK.fullmatch(module)
    if block:
        return f"blocks.{block[1]}.{DIFFUSERS_BLOCK.get(block[2], block[2])}"
    return DIFFUSERS_TOP.get(module, module)


def group(keys: list[str], params: "set[str] | dict") -> Grouped:
    """The file's keys by what they change among the DiT's `params` (its parameter names)."""
    layout, targets = layout_of(keys), targets_of(params)
    kohya = {t.replace(".", "_"): t for t in targets}
    grouped: dict[str, dict[str, str]] = {}
    unknown = []
    for key in keys:
        found = split(key)
        name = official(found[0], layout, kohya) if found else None
        if name is None or name not in targets:
            unknown.append(key)
            continue
        grouped.setdefault(name, {})[found[1]] = key
    return Grouped(layout, grouped, unknown)


def block_index(key: str, layout: str) -> int | None:
    """The block index a key names, in any layout, whether or not the model has that block (base-model checks)."""
    found = split(key)
    if found is None:
        return None
    module = found[0].removeprefix(KOHYA) if layout == "kohya" else strip_prefix(found[0])
    match = re.match(r"blocks[._](\d+)[._]", module)
    return int(match[1]) if match else None
