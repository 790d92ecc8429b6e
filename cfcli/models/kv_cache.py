"""Preallocated self-attention KV cache for the causal DiT: every layer in one buffer, one bookkeeping per call.

Semantics are the official ones (spec §2.3–2.4): a call for frames `[start, start+n)` appends when it reaches past
everything written so far and overwrites the same slots otherwise (later denoising steps and the clean-context pass
of a block). With a window, an append that would overflow evicts the oldest frames after the `sink` first ones by
shifting the rest left. Keys are stored after RoPE at their absolute frame index; values raw. The indices live on the
host, so nothing in the loop waits for the GPU.
"""

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class _Plan:
    write: slice
    read: slice
    evict: int
    keep: int


class KVCache:
    """K/V of `num_layers` layers for `capacity` frames of `frame_tokens` tokens.

    `sink_frames` frames at the start are never evicted; `rolling=False` makes an overflow an error instead of an
    eviction (global attention over the whole video).
    """

    def __init__(self, num_layers: int, batch: int, capacity: int, frame_tokens: int, heads: int, head_dim: int,
                 *, sink_frames: int = 0, rolling: bool = False, dtype=torch.float32, device="cpu"):
        self.frame_tokens = frame_tokens
        self.capacity = capacity * frame_tokens
        self.sink = sink_frames * frame_tokens
        self.rolling = rolling
        shape = (num_layers, 2, batch, self.capacity, heads, head_dim)
        self.kv = torch.zeros(shape, dtype=dtype, device=device)
        self.reset()

    def reset(self) -> None:
        """Forget every frame (the buffer is not cleared: nothing past `local_end` is ever read)."""
        self.global_end = 0
        self.local_end = 0
        self._plan: _Plan | None = None

    @property
    def frames(self) -> int:
        """Frames currently held (at most the capacity)."""
        return self.local_end // self.frame_tokens

    def begin(self, start_frame: int, num_frames: int, refresh: bool = False) -> None:
        """Plan the write/read slots of a call covering frames `[start_frame, start_frame + num_frames)`.

        Every call stores its frames' keys/values (a clean pass overwrites its block's steps'), so `refresh` changes
        nothing here.
        """
        n = num_frames * self.frame_tokens
        end = start_frame * self.frame_tokens + n
        grow = end - self.global_end
        evict = keep = 0
        if grow > 0 and self.local_end + n > self.capacity:
            if not self.rolling:
                raise ValueError(f"KV cache holds {self.capacity // self.frame_tokens} frames; this call needs more")
            evict = self.local_end + n - self.capacity
            keep = self.local_end - evict - self.sink
        local_end = self.local_end + grow - evict
        self._plan = _Plan(slice(local_end - n, local_end), slice(max(0, local_end - self.capacity), local_end),
                           evict, keep)
        self._next = (end, local_end)

    def plan_key(self) -> tuple[int, ...]:
        """The planned call's slots (write, read, eviction) as a hashable key: calls with equal keys run the same
        tensor operations on the buffer, so one CUDA graph serves them all."""
        p = self._plan
        return p.write.start, p.write.stop, p.read.start, p.read.stop, p.evict, p.keep

    def update(self, layer: int, k: Tensor, v: Tensor, raw_k: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Store this call's roped keys and values for `layer`; return the keys/values to attend to.

        `raw_k` (the keys before RoPE) is unused here; the rolling long-video cache keeps its anchor un-roped.
        """
        p = self._plan
        buf = self.kv[layer]
        if p.evict:
            src = buf[:, :, self.sink + p.evict:self.sink + p.evict + p.keep].clone()
            buf[:, :, self.sink:self.sink + p.keep] = src
        buf[0, :, p.write] = k
        buf[1, :, p.write] = v
        return buf[0, :, p.read], buf[1, :, p.read]

    def end(self) -> None:
        """Commit the indices of the call planned by `begin`."""
        self.global_end, self.local_end = self._next
        self._plan = None
