"""KV cache of the Rolling Forcing long-video model: an un-roped anchor plus a rolling window of clean frames.

Layout of one layer's buffer (`anchor + attn` frames; 3 + 21 = 24 for the released model, spec §5.2):

    [ anchor: block 0, keys stored WITHOUT RoPE | clean blocks 1, 2, …, keys roped at their absolute frame ]

Only clean keys/values end up here: each sampler window caches just its *first* block, via a separate clean pass
(`begin(…, refresh=True)`) once that block is final. Per DiT call the cache plans, from the call's first frame:

- append: a window whose first block lies past everything cached reserves that block's slots; when the buffer is full
  the oldest non-anchor frames are evicted by shifting the rest left (the anchor never moves);
- main pass (the window's noisy frames): keys = `[anchor re-roped just before the working cache | working cache |
  window]` where the working cache is the newest clean frames before the window, capped so that everything fits in
  `attn` frames; while the window starts at frame 0 it attends only to itself;
- clean pass (`refresh=True`): the block's keys are written to its slots (un-roped in slot 0), then its queries attend
  to the newest `attn` cached frames including itself, the anchor re-roped at frame 0 only while it is among them.

Indices are host integers in frames; the buffer and the key-assembly scratch are allocated once.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from cfcli.ops.rope import apply_rope


@dataclass(frozen=True)
class _Plan:
    """Frame ranges of one DiT call (all in buffer slots except `anchor_pos`, an absolute RoPE frame)."""

    slot: int  # first slot of the window's first block
    evict: int  # frames evicted before this call (shifted out left of the anchor)
    keep: int  # frames that move left when evicting
    refresh: bool  # a clean pass: store the block, attend to the cache
    own: bool  # attend only to the call's own tokens
    read: tuple[int, int]  # cached frames attended to (working cache, or the clean pass's window)
    anchor_pos: int | None  # RoPE frame of the anchor in front of `read`; None: the anchor is not attended
    commit: tuple[int, int] | None  # (global_end, local_end) after the call, when it appended


class RollingKVCache:
    """K/V of `num_layers` layers: `anchor_frames` anchor + `attn_frames` rolling frames of `frame_tokens` tokens.

    `rope(start_frame, frames)` returns the RoPE table of that frame range (the DiT's, so tables are shared).
    """

    def __init__(self, num_layers: int, batch: int, frame_tokens: int, heads: int, head_dim: int, *,
                 anchor_frames: int, attn_frames: int, rope: Callable[[int, int], Tensor],
                 dtype=torch.float32, device="cpu"):
        if attn_frames <= anchor_frames:
            raise ValueError(f"attention window of {attn_frames} frames leaves no room beside a "
                             f"{anchor_frames}-frame anchor")
        self.frame_tokens = frame_tokens
        self.anchor_frames, self.attn_frames = anchor_frames, attn_frames
        self.capacity_frames = anchor_frames + attn_frames
        self.rope = rope
        shape = (num_layers, 2, batch, self.capacity_frames * frame_tokens, heads, head_dim)
        self.kv = torch.zeros(shape, dtype=dtype, device=device)
        self._keys = torch.empty(shape[1:], dtype=dtype, device=device)  # assembled keys/values of one layer
        self.reset()

    def reset(self) -> None:
        """Forget every frame (the buffer is not cleared: nothing past `local_end` is ever read)."""
        self.global_end = 0  # absolute frame one past the last cached block
        self.local_end = 0  # slot one past the last cached frame
        self._plan: _Plan | None = None

    @property
    def frames(self) -> int:
        """Frames currently held (anchor included; at most `anchor_frames + attn_frames`)."""
        return self.local_end

    def begin(self, start_frame: int, num_frames: int, refresh: bool = False) -> None:
        """Plan a call whose frames start at `start_frame` (the window's first block is the one cached).

        `refresh`: a clean pass, which stores that block and attends to the cache; otherwise a main pass, which reads
        the cache and stores nothing.
        """
        a, cap = self.anchor_frames, self.capacity_frames
        end = start_frame + a  # official: only the window's first block is cached, an anchor-sized block
        grow = end - self.global_end  # > 0 the first time a block leads a window: append; else overwrite in place
        evict = max(0, self.local_end + grow - cap) if grow > 0 else 0
        keep = self.local_end - evict - a if evict else 0  # shift-left eviction, the anchor acting as sink
        local_end = self.local_end + grow - evict
        slot = local_end - a
        own = slot == 0  # official: while the window starts at frame 0 it attends to itself only
        if refresh:
            # official: the clean pass reads the newest `attn` frames including its own; the anchor (re-roped at
            # frame 0) only while it is among them, i.e. until more than `attn` frames are cached
            read = (max(0, local_end - self.attn_frames), local_end)
            anchor_pos = 0 if read[0] == 0 else None
            read = (max(read[0], a), read[1])  # never read anchor slots as if they were roped
        else:
            # official: working cache = newest clean frames before the window, capped so that anchor + working +
            # window fit in `attn` frames; the anchor is re-roped to sit right before the working cache
            budget = max(0, self.attn_frames - num_frames - a)
            read = (max(a, slot - budget), slot)
            anchor_pos = start_frame - (read[1] - read[0]) - a
        commit = (end, local_end) if grow > 0 else None
        self._plan = _Plan(slot, evict, keep, refresh, own, read, anchor_pos, commit)

    def plan_key(self) -> tuple | None:
        """None: the anchor is re-roped per call (a table looked up on the host), so no call replays as a graph."""

    def update(self, layer: int, k: Tensor, v: Tensor, raw_k: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Apply the plan to `layer` (roped keys `k`, un-roped `raw_k`, values `v`); return what to attend to."""
        p, t = self._plan, self.frame_tokens
        buf = self.kv[layer]
        if p.evict:
            a = self.anchor_frames * t
            src = buf[:, :, a + p.evict * t:a + (p.evict + p.keep) * t].clone()
            buf[:, :, a:a + p.keep * t] = src
        if p.refresh:  # (the official main pass also writes its noisy first block; this pass overwrites it)
            n = self.anchor_frames * t
            slots = slice(p.slot * t, p.slot * t + n)
            buf[0, :, slots] = (raw_k if p.slot == 0 else k)[:, :n]  # official: the anchor is stored un-roped
            buf[1, :, slots] = v[:, :n]
        if p.own:
            return k, v
        if p.refresh and p.anchor_pos is None:
            return buf[0, :, p.read[0] * t:p.read[1] * t], buf[1, :, p.read[0] * t:p.read[1] * t]
        return self._assemble(buf, p, k, v)

    def _assemble(self, buf: Tensor, p: _Plan, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Keys/values `[anchor re-roped at anchor_pos | cached read range | (main pass) the call's own]`."""
        t, out = self.frame_tokens, self._keys
        a = self.anchor_frames * t
        r0, r1 = p.read[0] * t, p.read[1] * t
        out[0, :, :a] = apply_rope(buf[0, :, :a], self.rope(p.anchor_pos, self.anchor_frames))
        out[1, :, :a] = buf[1, :, :a]
        n = a + r1 - r0
        out[:, :, a:n] = buf[:, :, r0:r1]
        if not p.refresh:
            out[0, :, n:n + k.shape[1]] = k
            out[1, :, n:n + k.shape[1]] = v
            n += k.shape[1]
        return out[0, :, :n], out[1, :, :n]

    def end(self) -> None:
        """Commit the indices of the call planned by `begin` (only appending calls move them)."""
        if self._plan.commit is not None:
            self.global_end, self.local_end = self._plan.commit
        self._plan = None
