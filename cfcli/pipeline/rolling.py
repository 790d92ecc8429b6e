"""The Rolling Forcing sampler of the long-video model (spec §5.2; official `long_video/` pipeline).

With a step list τ of W entries (W = 4: 1000, 937.5, 833.3, 625 warped), blocks of 3 latent frames move through a
window of up to W blocks, one denoising step per block per window, all in one DiT call with per-frame timesteps:

    window w holds blocks max(0, w−W+1) … min(n−1, w); block b is at step w − b (its age):

    w=0: [b0@τ0]                   w=3: [b0@τ3 b1@τ2 b2@τ1 b3@τ0]   (a full window, oldest→newest)
    w=1: [b0@τ1 b1@τ0]             w=4: [b1@τ3 b2@τ2 b3@τ1 b4@τ0]
    …                              last windows: [b(n−3)@τ3 b(n−2)@τ2 b(n−1)@τ1], …, [b(n−1)@τ3]

The newest block enters from the initial noise; every other block's x0 prediction is re-noised to its next step
for the following window; the oldest block's x0 (step W−1) is final: it is yielded at once, then a clean pass at
t = 0 stores its keys/values in the `RollingKVCache` (first block = un-roped anchor, then a bounded rolling window),
so memory stays flat however long the video. n blocks take n + W − 1 windows.

Random stream (official order): the initial noise of all frames is drawn up front by the caller; then, per window,
for each block (oldest first) that is not final, one `randn` of the *whole window's* shape of which only that block's
slice is used.

Official behaviour reproduced (spec §5.2, §8.1 #13): per-frame timesteps, the window attends to itself without a
mask; the anchor is block 0 stored un-roped and re-roped right before the working cache; attention is capped at 21
frames (anchor + working cache + window) in a 24-frame cache; only each window's oldest block is cached, via a clean
pass; x0 = x_t − σ·v in float64; re-noising with the float32 σ table; context noise 0.

Prompt switching (`TextSchedule`): a window is one DiT call with one text K/V, that of the prompt in effect at the
window's *newest* block's first latent frame. So a switch starts with the window its first block enters; the older
blocks still in flight there take their remaining steps under the new prompt, and a finishing block's clean pass uses
its own (last) window's prompt. Blocks finalised before that window are exactly those of a run without the switch
(same seed: the random stream does not depend on the text). A window is one step of every block in it, so a switch
never lands between steps here: a schedule's step positions are not looked up (`cf generate` refuses `TIME@K` for
this sampler, and `cf live` lands its prompts at the next block to enter). A `StepSync` holds the loop near the GPU
before each window's lookup.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from cfcli.errors import CfError
from cfcli.models.dit import CausalWanDiT
from cfcli.models.rolling_cache import RollingKVCache
from cfcli.pipeline.prompts import TextSchedule, text_at
from cfcli.pipeline.sampler import DiTCall, StepPlan, StepSync
from cfcli.pipeline.schedule import FlowSchedule, add_noise, flow_to_x0


@dataclass(frozen=True)
class Window:
    """One pass over blocks `first … last` (inclusive); block b is at step `index − b`."""

    index: int
    first: int
    last: int
    depth: int  # W, the number of denoising steps

    @property
    def blocks(self) -> int:
        return self.last - self.first + 1

    def age(self, block: int) -> int:
        return self.index - block

    @property
    def enters(self) -> bool:
        """The newest block starts here from pure noise."""
        return self.age(self.last) == 0

    @property
    def finishes(self) -> bool:
        """The oldest block takes its last step here."""
        return self.age(self.first) == self.depth - 1


def windows(num_blocks: int, depth: int) -> list[Window]:
    """The rolling schedule: `num_blocks + depth − 1` windows.

    Equals the official one for num_blocks ≥ depth; for shorter videos (where the official code reuses fresh noise
    and repeats steps) every block still gets exactly one pass per step.
    """
    return [Window(w, max(0, w - depth + 1), min(num_blocks - 1, w), depth)
            for w in range(num_blocks + depth - 1)]


def rolling_cache(dit: CausalWanDiT, latent_hw: tuple[int, int], block_frames: int, attn_frames: int, depth: int,
                  *, batch: int = 1, dtype=torch.float32, device="cpu") -> RollingKVCache:
    """The long-video cache: a one-block anchor plus `attn_frames` frames (3 + 21 = 24 frames for the release).

    As in the official code the anchor is always the first block (a preset's `sink_frames` is not used).
    """
    if depth * block_frames > attn_frames:
        raise CfError(f"a {depth}-block rolling window of {block_frames}-frame blocks does not fit the "
                      f"{attn_frames}-frame attention window", "raise local_attn_frames in the preset")
    cfg = dit.cfg
    h, w = latent_hw
    return RollingKVCache(cfg.num_layers, batch, dit.frame_tokens(h, w), cfg.num_heads, cfg.head_dim,
                          anchor_frames=block_frames, attn_frames=attn_frames,
                          rope=lambda start, frames: dit.rope(start, frames, h, w), dtype=dtype, device=device)


class RollingSampler:
    """Streams one video through the rolling window; same `stream` interface as `CausalSampler`."""

    def __init__(self, dit: CausalWanDiT, schedule: FlowSchedule, plan: StepPlan, block_frames: int,
                 cache: RollingKVCache, sync: StepSync | None = None):
        if plan.first_block_steps:
            raise CfError("the rolling sampler has no separate first-block schedule",
                          "set first_block_steps: null in the preset")
        self.dit, self.cache, self.block_frames, self.sync = dit, cache, block_frames, sync
        self.steps = plan.steps
        self.depth = len(plan.steps)
        dev = cache.kv.device
        # Per-frame rows for a full window, oldest block first (official: τ reversed); a window uses a slice of them.
        rev = list(reversed(plan.steps))
        self._t_row = torch.tensor(rev, dtype=torch.float32, device=dev).repeat_interleave(block_frames)
        sig = [schedule.sigma(t) for t in rev]  # float32 table values, argmin lookup as the official wrapper
        self._sigma_row = torch.tensor(sig, dtype=torch.float64, device=dev).repeat_interleave(block_frames)
        # σ of the next step for a block of each age (the last age has none).
        nxt = [schedule.sigma(t) for t in plan.steps[1:]]
        self._next_sigma = torch.tensor(nxt, dtype=torch.float32, device=dev)
        self._t_clean = torch.zeros(block_frames, dtype=torch.float32, device=dev)
        self._x: Tensor | None = None  # window input [B, W·block, C, h, w], refilled in place
        self._eps: Tensor | None = None  # flat scratch for the window-shaped re-noising draws

    @staticmethod
    def in_flight_blocks(steps: int) -> int:
        """Blocks older than the newest one in a full window: a prompt switch reaches them too (module docstring)."""
        return steps - 1

    @staticmethod
    def call_plan(plan: StepPlan, block_frames: int, latent_frames: int, window: int,
                  context_frames: int = 0) -> list[list[DiTCall]]:
        """The DiT calls `stream` makes, grouped by the block each window finishes: its windows, then its clean pass
        (run right after that block was handed out). `window`: the attention window in latent frames.

        Main pass: the window's frames attend to themselves, plus (once the window has left frame 0) the anchor block
        and the working cache, capped at the attention window. Clean pass (windows that finish a block, but the
        last): the block's frames attend to the newest cached frames including itself, capped likewise.
        """
        if context_frames:
            raise ValueError("the rolling sampler cannot start from given frames")
        bf = block_frames
        groups: list[list[DiTCall]] = [[]]
        wins = windows(latent_frames // bf, len(plan.steps))
        for win in wins:
            frames, start = win.blocks * bf, win.first * bf
            keys = frames if start == 0 else bf + min(start - bf, window - frames - bf) + frames
            groups[-1].append(DiTCall(frames, keys, start))
            if win.finishes:
                if win is not wins[-1]:
                    groups[-1].append(DiTCall(bf, min(window, (win.first + 1) * bf), start, True))
                groups.append([])
        return groups[:-1]

    def _row(self, win: Window) -> slice:
        """Where window `win` sits in the full-window rows (oldest age first)."""
        bf = self.block_frames
        return slice((self.depth - 1 - win.age(win.first)) * bf, (self.depth - win.age(win.last)) * bf)

    def _allocate(self, noise: Tensor) -> None:
        b, _, c, h, w = noise.shape
        shape = (b, self.depth * self.block_frames, c, h, w)
        if self._x is None or self._x.shape != shape or self._x.dtype != noise.dtype:
            self._x = torch.empty(shape, dtype=noise.dtype, device=noise.device)
            self._eps = torch.empty(self._x.numel(), dtype=noise.dtype, device=noise.device)

    def _denoise(self, win: Window, text_kv: Tensor) -> Tensor:
        """One DiT call on the window's frames at their per-frame timesteps; returns x0 (float64 conversion)."""
        bf, row = self.block_frames, self._row(win)
        x = self._x[:, :win.blocks * bf]
        t = self._t_row[row].expand(x.shape[0], -1)
        flow = self.dit(x, t, text_kv, self.cache, win.first * bf)
        self._called()
        sigma = self._sigma_row[row].view(1, -1, 1, 1, 1)
        return flow_to_x0(x, flow, sigma)  # per-frame σ

    def _renoise(self, win: Window, x0: Tensor, generator: torch.Generator) -> None:
        """Fill the window input for the next window: each unfinished block's x0 re-noised to its next step."""
        bf = self.block_frames
        eps = self._eps[:x0.numel()].view(x0.shape)
        dst = 0
        for b in range(win.first, win.last + 1):
            age = win.age(b)
            if age == self.depth - 1:
                continue  # final: leaves the window
            # official quirk: a noise tensor of the whole window is drawn per block; only its slice is used
            eps.normal_(generator=generator)
            i = (b - win.first) * bf
            self._x[:, dst:dst + bf] = add_noise(x0[:, i:i + bf], eps[:, i:i + bf], self._next_sigma[age])
            dst += bf

    def _enter(self, noise: Tensor, block: int, win_blocks: int) -> None:
        """Put block `block`'s initial noise at the newest position of a `win_blocks`-block window input."""
        bf = self.block_frames
        self._x[:, (win_blocks - 1) * bf:win_blocks * bf] = noise[:, block * bf:(block + 1) * bf]

    def _refresh(self, win: Window, x0: Tensor, text_kv: Tensor) -> None:
        """Clean pass: the finished block's x0 at t = 0 (official context_noise = 0) overwrites its cache slots."""
        bf = self.block_frames
        t = self._t_clean.expand(x0.shape[0], -1)
        self.dit(x0[:, :bf], t, text_kv, self.cache, win.first * bf, refresh=True)
        self._called()

    def _called(self) -> None:
        if self.sync is not None:
            self.sync.done()

    def commit_now(self) -> None:
        """Nothing: a window's clean passes run as the next window is planned (`stream`)."""

    def stream(self, noise: Tensor, text: Tensor | TextSchedule, generator: torch.Generator) -> Iterator[Tensor]:
        """Yield each block's final x0 [B, block, C, h, w] of `noise` [B, F, C, h, w] as it leaves the window.

        `text` is one prompt's cross-attention K/V, or a `TextSchedule` (the window's newest block picks the prompt).
        """
        n = noise.shape[1]
        if n % self.block_frames:
            raise ValueError(f"{n} latent frames is not a whole number of {self.block_frames}-frame blocks")
        self._allocate(noise)
        plan = windows(n // self.block_frames, self.depth)
        self._enter(noise, 0, 1)
        for k, win in enumerate(plan):
            if self.sync is not None:
                self.sync.wait()
            text_kv = text_at(text, win.last * self.block_frames)  # newest block's prompt (module docstring)
            x0 = self._denoise(win, text_kv)
            if win.finishes:
                yield x0[:, :self.block_frames]
            self._renoise(win, x0, generator)
            if k + 1 < len(plan):
                nxt = plan[k + 1]
                if nxt.enters:
                    self._enter(noise, nxt.last, nxt.blocks)
                if win.finishes:
                    # Clean passes of unfinished blocks (official windows 0…W−2) are skipped: nothing reads them
                    # before the final one overwrites them; nor is the last window's, which nothing reads.
                    self._refresh(win, x0, text_kv)
