"""Layers kept in host memory and run on the GPU two at a time: each copied in just before it runs.

`LayerStream(layers, device)` iterates over GPU-resident stand-ins of `layers` (same modules, same kernels, so the same
results as resident layers): two device "slots" are built once; while layer i runs in one, layer i + 1 is copied into
the other on a side stream from pinned host memory. Events order it: a slot is refilled only after the layer that used
it has run, and a layer runs only after its copy landed. Nothing waits on the host. Device memory: two layers.

Off CUDA there is nothing to stream: iterating yields the layers themselves.

Used by the streamed umT5 (`cfcli.models.t5_stream`) and by the DiT block offload of the smallest memory plan
(`offload_blocks_`).
"""

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn


def pin_(module: nn.Module) -> nn.Module:
    """Move `module`'s parameters and buffers to pinned host memory (for asynchronous copies), in place."""
    if not torch.cuda.is_available():
        return module.cpu()
    for m in module.modules():
        for table in (m._parameters, m._buffers):
            for name, t in table.items():
                if t is not None:
                    pinned = t.detach().cpu().pin_memory()
                    table[name] = nn.Parameter(pinned, requires_grad=False) if isinstance(t, nn.Parameter) else pinned
    return module


def _tensors(m: nn.Module) -> list[torch.Tensor]:
    return [*m.parameters(), *m.buffers()]


class LayerStream:
    """Iterate over `layers` (identical in structure, held in host memory) as modules ready to run on `device`.

    `bind(slot, layer)` copies whatever non-tensor state a slot needs from the layer it now holds (e.g. its index).
    """

    def __init__(self, layers: list[nn.Module], device: torch.device,
                 bind: Callable[[nn.Module, nn.Module], None] = lambda slot, layer: None):
        self.layers, self.device, self.bind = [pin_(m) for m in layers], torch.device(device), bind
        if self.device.type != "cuda" or not layers:
            return
        self.slots = [copy.deepcopy(layers[0]).to(self.device) for _ in range(min(2, len(layers)))]
        self.copier = torch.cuda.Stream(self.device)
        self.loaded = [torch.cuda.Event() for _ in self.slots]
        self.free = [torch.cuda.Event() for _ in self.slots]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[nn.Module]:
        if self.device.type != "cuda":
            yield from self.layers
            return
        n, k = len(self.layers), len(self.slots)
        self._load(0)
        for i in range(n):
            if i + 1 < n:
                self._load(i + 1)
            slot = i % k
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(self.loaded[slot])
            yield self.slots[slot]
            self.free[slot].record(compute)

    def _load(self, i: int) -> None:
        slot = i % len(self.slots)
        with torch.cuda.stream(self.copier):
            self.copier.wait_event(self.free[slot])  # the layer that used this slot has run (no-op the first time)
            for dst, src in zip(_tensors(self.slots[slot]), _tensors(self.layers[i])):
                dst.copy_(src, non_blocking=True)
            self.loaded[slot].record(self.copier)
        self.bind(self.slots[slot], self.layers[i])


class OffloadedBlocks(nn.Module):
    """Stands in for a model's `blocks` ModuleList: the first blocks resident, the rest streamed (`LayerStream`)."""

    def __init__(self, resident: list[nn.Module], streamed: LayerStream):
        super().__init__()
        self.resident = nn.ModuleList(resident)
        self.streamed = streamed  # not a submodule: `.to(device)` must leave its host copies alone

    def __len__(self) -> int:
        return len(self.resident) + len(self.streamed)

    def __iter__(self) -> Iterator[nn.Module]:
        yield from self.resident
        yield from self.streamed

    def distinct(self) -> list[nn.Module]:
        """Every module that runs, once: the resident blocks and the stream's device slots (what to compile)."""
        return [*self.resident, *getattr(self.streamed, "slots", self.streamed.layers)]


def offload_blocks_(model: nn.Module, count: int, bind: Callable[[nn.Module, nn.Module], None]) -> int:
    """Keep the last `count` of `model.blocks` in host memory and stream them in per call; returns how many."""
    blocks = list(model.blocks)
    count = min(count, len(blocks))
    if count <= 0:
        return 0
    device = next(model.parameters()).device
    keep, away = blocks[:len(blocks) - count], blocks[len(blocks) - count:]
    model.blocks = OffloadedBlocks(keep, LayerStream(away, device, bind))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return count


class Parked:
    """Modules kept in pinned host memory, on the device only inside `with parked.on_device():` (e.g. the DiT's
    cross-attention K/V projections, which run once per prompt). Same modules, same kernels, same results."""

    def __init__(self, modules: list[nn.Module], device: torch.device):
        self.device = torch.device(device)
        self.modules = [pin_(m) if self.device.type == "cuda" else m for m in modules]

    @contextlib.contextmanager
    def on_device(self) -> Iterator[None]:
        if self.device.type != "cuda":
            yield
            return
        host = [{name: p for name, p in m._parameters.items()} for m in self.modules]
        for m, params in zip(self.modules, host):
            for name, p in params.items():
                if p is not None:
                    m._parameters[name] = nn.Parameter(p.to(self.device, non_blocking=True), requires_grad=False)
        try:
            yield
        finally:
            for m, params in zip(self.modules, host):
                m._parameters.update(params)


class HostStore:
    """A dict of tensors kept in pinned host memory: `store[key] = t` copies t out (asynchronously, in stream
    order), `store.get(key)` copies it back to the device it came from. The decoder's causal caches use it in the
    smallest memory plan (`WanVAE.cache_on_host`): only the layer that runs has its past on the GPU."""

    def __init__(self):
        self._host: dict = {}

    def get(self, key, default=None):
        entry = self._host.get(key)
        if entry is None:
            return default
        host, device = entry
        return host.to(device, non_blocking=True)

    def __setitem__(self, key, t: torch.Tensor) -> None:
        entry = self._host.get(key)
        if t.device.type != "cuda":
            self._host[key] = (t, t.device)
            return
        if entry is None or entry[0].shape != t.shape:  # (the layout of the first: channels-last stays so)
            entry = (torch.empty_like(t, device="cpu", pin_memory=True), t.device)
            self._host[key] = entry
        entry[0].copy_(t, non_blocking=True)

    def __contains__(self, key) -> bool:
        return key in self._host
