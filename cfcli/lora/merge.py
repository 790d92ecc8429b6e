"""LoRAs merged into a DiT's weights: each changed parameter becomes `w + Σ scale·delta`, computed in float32, cast
back to the parameter's dtype, once, after loading and before quantisation, offloading, compilation and graph capture
(`cfcli.pipeline.engine.Engine.configure`), so a LoRA costs nothing per frame.

A merge writes new tensors; it never writes into the loaded ones, which may be memory-mapped from the cached
checkpoint. A re-merge (`remerge_`, another set of LoRAs on a loaded DiT) starts again from the weights as loaded,
kept on the host by the first merge with `keep=True` (or ahead of a swap by `keep_`, off the thread that generates),
and writes in place, so captured CUDA graphs stay valid.
"""

import contextlib
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from cfcli.lora.files import LoraFile

Adapters = Sequence[tuple[LoraFile, float]]  # each file with its scale


def changed(adapters: Adapters) -> list[str]:
    """The parameters any of `adapters` changes, in the order they first appear."""
    return list(dict.fromkeys(name for lora, _ in adapters for name in lora.changes))


def merged(base: Tensor, name: str, adapters: Adapters) -> Tensor:
    """`base` with every adapter's delta for `name` added in float32, stacked in order, cast to `base`'s dtype."""
    total = base.detach().to(torch.float32, copy=True)
    for lora, scale in adapters:
        if name in lora.changes:
            total.add_(lora.delta(name, total.device), alpha=scale)
    return total.to(base.dtype)


def host_copy(t: Tensor) -> Tensor:
    """`t` copied to host memory; page-locked where it comes from a GPU, so that a swap copies it back at full speed
    and without waiting for the copy on the host."""
    if t.device.type != "cuda":
        return t.detach().to("cpu", copy=True)
    return torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t.detach())


@torch.no_grad()
def merge_(module: nn.Module, adapters: Adapters, keep: bool = False) -> dict[str, Tensor]:
    """Merge `adapters` into `module`'s parameters (new tensors, the old left untouched). With `keep`, the weights as
    they were, on the host (what `remerge_` starts from); else an empty dict."""
    params = dict(module.named_parameters())
    base = {}
    for name in changed(adapters):
        p = params[name]
        if keep:
            base[name] = host_copy(p)
        p.data = merged(p, name, adapters)
    return base


@torch.no_grad()
def keep_(module: nn.Module, base: dict[str, Tensor], names: Iterable[str], lock=contextlib.nullcontext()) -> None:
    """Add to `base` the parameters `names` not in it yet, as they are now: a parameter missing from `base` has no
    LoRA merged, so its value now is its value as loaded. `lock` (held by a swap on another thread) keeps a swap from
    writing a parameter while it is copied. The copies run on a stream of their own, beside the work on the module."""
    params = dict(module.named_parameters())
    missing = [name for name in names if name not in base]
    cuda = [params[name].device for name in missing if params[name].is_cuda]
    side = torch.cuda.Stream(cuda[0]) if cuda else None
    with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
        for name in missing:
            with lock:
                if name not in base:
                    base[name] = host_copy(params[name])
    if side is not None:
        side.synchronize()


@torch.no_grad()
def remerge_(module: nn.Module, base: dict[str, Tensor], adapters: Adapters, previous: Adapters = ()) -> list[str]:
    """Replace the merged LoRAs (`previous`) with `adapters`, in place: each parameter either changes, from its weights
    as loaded (`base`, kept and extended here) plus the new deltas; one no LoRA changes any more goes back to its
    loaded value. A quantised layer (`Int8Linear`, `FP8Linear`) takes its merged weight through `assign_`, quantised as
    at load; its weight as loaded must be in `base` already (kept before it was quantised). Returns the names
    rewritten."""
    names = list(dict.fromkeys([*changed(previous), *changed(adapters)]))
    keep_(module, base, names)
    params = dict(module.named_parameters())
    for name in names:
        loaded = base[name]
        owner, _, attr = name.rpartition(".")
        layer = module.get_submodule(owner)
        if name not in params and attr == "weight" and hasattr(layer, "assign_"):  # a quantised layer's weight
            layer.assign_(merged(loaded.to(layer.weight.device, non_blocking=True), name, adapters))
            continue
        p = params[name]
        p.copy_(merged(loaded.to(p.device, non_blocking=True), name, adapters))
    return names
