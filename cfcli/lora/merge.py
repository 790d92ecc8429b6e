"""LoRAs merged into a DiT's weights: each changed parameter becomes `w + Σ scale·delta`, computed in float32, cast
back to the parameter's dtype, once, after loading and before quantisation, offloading, compilation and graph capture
(`cfcli.pipeline.engine.Engine.configure`), so a LoRA costs nothing per frame.

A merge writes new tensors; it never writes into the loaded ones, which may be memory-mapped from the cached
checkpoint. A re-merge (`remerge_`, another set of LoRAs on a loaded DiT) starts again from the weights as loaded,
kept on the host by the first merge with `keep=True`, and writes in place, so captured CUDA graphs stay valid.
"""

from collections.abc import Sequence

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


@torch.no_grad()
def merge_(module: nn.Module, adapters: Adapters, keep: bool = False) -> dict[str, Tensor]:
    """Merge `adapters` into `module`'s parameters (new tensors, the old left untouched). With `keep`, the weights as
    they were, on the host (what `remerge_` starts from); else an empty dict."""
    params = dict(module.named_parameters())
    base = {}
    for name in changed(adapters):
        p = params[name]
        if keep:
            base[name] = p.detach().to("cpu", copy=True)
        p.data = merged(p, name, adapters)
    return base


@torch.no_grad()
def remerge_(module: nn.Module, base: dict[str, Tensor], adapters: Adapters) -> None:
    """Replace the merged LoRAs with `adapters`, in place: each parameter from its weights as loaded (`base`, kept and
    extended here) plus the new deltas. Parameters no LoRA changes any more go back to their loaded values."""
    params = dict(module.named_parameters())
    for name in changed(adapters):
        base.setdefault(name, params[name].detach().to("cpu", copy=True))
    for name, loaded in base.items():
        p = params[name]
        p.copy_(merged(loaded.to(p.device), name, adapters))
