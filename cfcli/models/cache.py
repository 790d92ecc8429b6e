"""What the DiT asks of a KV cache: the `DiTCache` protocol.

Implemented by the block-causal `KVCache` (and its 8-bit `QuantKVCache`) and the long-video `RollingKVCache`. One DiT
call is `begin` (plan the call's slots on the host), `update` once per layer (store this call's keys/values, return
what to attend to: tensor work only), `end` (commit the plan). A call with `refresh=True` is a clean pass: its
keys/values are the ones later calls attend to. The causal cache stores every call's frames, so there the flag changes
nothing; the rolling cache stores only what a clean pass gives it.
"""

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class DiTCache(Protocol):
    kv: Tensor  # the key/value buffer, allocated once: its identity tells one cache's CUDA graphs from another's

    @property
    def frames(self) -> int:
        """Latent frames currently held."""
        ...

    def reset(self) -> None:
        """Forget every frame (keep the buffer)."""
        ...

    def begin(self, start_frame: int, num_frames: int, refresh: bool = False) -> None:
        """Plan a call over frames `[start_frame, start_frame + num_frames)`; `refresh`: a clean pass."""
        ...

    def plan_key(self) -> tuple | None:
        """The planned call's slots as a hashable key: calls with equal keys run the same tensor operations on the
        buffer, so one CUDA graph serves them all. None: the plan depends on more than its slots (no graph)."""
        ...

    def update(self, layer: int, k: Tensor, v: Tensor, raw_k: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Store `layer`'s roped keys `k` (un-roped `raw_k`) and values `v` of this call; return keys/values to
        attend to."""
        ...

    def end(self) -> None:
        """Commit the plan made by `begin`."""
        ...
