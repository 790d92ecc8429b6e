"""The few-step block-causal sampler of Causal Forcing / Self Forcing (spec §4.2–4.5).

Per block of `block_frames` latent frames: run the step list (x0 prediction at each step, re-noised with fresh
Gaussian noise to the next step's σ), hand the block's final x0 out, then run the clean-context pass (t = 0) that
overwrites the block's KV slots. Given latents (an I2V picture, the context of a clip to extend) are pushed through at
t = 0 first. The random stream is the official one: the initial noise of all generated frames is drawn up front, then
one `randn` of the block's shape per re-noising, in order, from the same generator.

Prompt switching: the text may be a `TextSchedule`; each block (its denoising steps and its clean-context pass) uses
the cross-attention K/V of the prompt in effect at the block's first latent frame. A schedule with step positions
(`by_step`) is looked up again before each later step, and the clean pass uses the last step's K/V. Only the text K/V
changes at a switch: the visual KV cache carries on, and the random stream is the same as without the switch.

`StepSync` (`cf live` only) keeps the loop at most two DiT calls ahead of the GPU, so that a lookup between steps
happens about when the GPU gets there.
"""

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cfcli.models.cache import DiTCache
from cfcli.models.dit import CausalWanDiT
from cfcli.pipeline.prompts import TextSchedule, by_step, text_at
from cfcli.pipeline.schedule import FlowSchedule, add_noise, flow_to_x0


@dataclass(frozen=True)
class StepPlan:
    """Warped float timesteps for every block, and for the first generated block when it differs (CF++ 1/2-step)."""

    steps: tuple[float, ...]
    first_block_steps: tuple[float, ...] | None = None

    def for_block(self, index: int) -> tuple[float, ...]:
        return self.first_block_steps if index == 0 and self.first_block_steps else self.steps


@dataclass(frozen=True)
class DiTCall:
    """One DiT call of a sampler's call plan (`call_plan`).

    Equality compares what a call costs (`frames` and `keys`, all the FLOP model reads); `start` and `refresh` say
    which call it is.
    """

    frames: int  # latent frames in the call (query)
    keys: int  # latent frames attended (the cache's read slice, the call's own frames included)
    start: int = field(default=0, compare=False)  # absolute index of its first latent frame
    refresh: bool = field(default=False, compare=False)  # a clean pass at t = 0 (`DiTCache.begin`)


class StepSync:
    """Holds the sampler loop back until the GPU has finished the DiT call before the previous one.

    With CUDA graphs the loop enqueues a whole block in about a millisecond, so a text lookup "between steps" would
    happen long before the GPU reaches that step, and a live prompt queued meanwhile would wait for the next block.
    Waiting here, before each lookup, leaves one or two calls queued: the GPU keeps busy and a lookup is at most a
    step early. This is the one host wait in the loop, and only `cf live` asks for it (`Engine.generate(step_sync=)`;
    on CUDA only: off the GPU every call has finished when it returns).
    """

    def __init__(self, event: Callable[[], "torch.cuda.Event"] = torch.cuda.Event):
        self._event, self._queued = event, deque()

    def done(self) -> None:
        """A DiT call was just enqueued."""
        e = self._event()
        e.record()
        self._queued.append(e)

    def wait(self) -> None:
        """Before a lookup: every call but the last one enqueued has finished on the GPU."""
        while len(self._queued) > 1:
            self._queued.popleft().synchronize()


class CausalSampler:
    """Owns the running position of one video: frames primed or generated so far live in `cache`. `sync`: a
    `StepSync` to hold the loop near the GPU (`cf live`). `idle` (`cf live`): called once per block of two or more
    steps, after its first step is queued, where the loop may wait for playback; True: run the block again from its
    noise (the random stream rewound), as a block that started now would run (`denoise_block`)."""

    def __init__(self, dit: CausalWanDiT, schedule: FlowSchedule, plan: StepPlan, block_frames: int,
                 cache: DiTCache | None, sync: StepSync | None = None, idle: Callable[[], bool] | None = None):
        self.dit, self.schedule, self.plan = dit, schedule, plan
        self.block_frames = block_frames
        self.cache = cache
        self.sync = sync
        self.idle = idle
        self.frame = 0  # absolute index of the next latent frame
        self._uncommitted: tuple[Tensor, Tensor] | None = None  # (x0, K/V) of a yielded block whose clean pass waits
        self.blocks_done = 0  # generated blocks (the first-block schedule applies to the first one)

    @staticmethod
    def in_flight_blocks(steps: int) -> int:
        """Blocks before the current one still being denoised (none: each block finishes before the next starts)."""
        return 0

    @staticmethod
    def call_plan(plan: StepPlan, block_frames: int, latent_frames: int, window: int,
                  context_frames: int = 0) -> list[list[DiTCall]]:
        """The DiT calls `prime` then `stream` make, grouped by the hand-out they lead to (one per block; given
        frames are handed out once primed). `window`: latent frames the cache holds (`KVCache` capacity).

        Block i's group holds its denoising steps and then its clean-context pass (`commit_now`: the engine runs it
        before handing the block out, behind the block's decode); no clean pass follows the last block.
        """
        bf = block_frames

        def call(start: int, refresh: bool = False) -> DiTCall:
            return DiTCall(bf, min(start + bf, window), start, refresh)  # what the cache holds with the call written

        groups = [[call(s, True) for s in range(0, context_frames, bf)]] if context_frames else []
        blocks = latent_frames // bf
        for i in range(blocks):
            start = context_frames + i * bf
            groups.append([call(start)] * len(plan.for_block(i)) + ([call(start, True)] if i + 1 < blocks else []))
        return groups

    def _call(self, x: Tensor, t: float, text_kv: Tensor, refresh: bool = False) -> Tensor:
        ts = torch.full(x.shape[:2], t, dtype=torch.float32, device=x.device)
        out = self.dit(x, ts, text_kv, self.cache, self.frame, refresh=refresh)
        if self.sync is not None:
            self.sync.done()
        return out

    def _text(self, text: Tensor | TextSchedule, step: int) -> Tensor:
        """The K/V for denoising step `step` of the block at `self.frame`, looked up once the GPU is near it."""
        if self.sync is not None:
            self.sync.wait()
        return text_at(text, self.frame, step)

    def prime(self, latents: Tensor, text: Tensor | TextSchedule) -> None:
        """Push given clean latents [B, F, C, h, w] into the cache at t = 0, block by block."""
        if latents.shape[1] % self.block_frames:
            raise ValueError(f"context of {latents.shape[1]} latent frames is not a whole number of "
                             f"{self.block_frames}-frame blocks")
        for i in range(0, latents.shape[1], self.block_frames):
            self._call(latents[:, i:i + self.block_frames], 0.0, text_at(text, self.frame), refresh=True)
            self.frame += self.block_frames

    def _renoise(self, x0: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return add_noise(x0, eps, torch.tensor(sigma, dtype=torch.float32))  # a CPU σ: no copy to the device

    def denoise_block(self, noise: Tensor, text: Tensor | TextSchedule,
                      generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Run one block's step list from `noise` [B, block_frames, C, h, w] under `text` (looked up at the block's
        start, and before each later step where it has step positions); returns its x0 (cache not committed) and the
        K/V of its last step, which its clean pass uses."""
        steps = self.plan.for_block(self.blocks_done)
        stepped = by_step(text)
        rewind = generator.get_state() if self.idle is not None and len(steps) > 1 else None
        x, i = noise, 0
        while i < len(steps):
            if i == 1 and rewind is not None:
                if self.idle():  # the block's input is noise again, the random stream where it was at its start
                    generator.set_state(rewind)
                    x, i = noise, 0
                rewind = None  # once a block
            t = steps[i]
            if i == 0 or stepped:
                text_kv = self._text(text, i)
            x0 = flow_to_x0(x, self._call(x, t, text_kv), self.schedule.sigma(t))
            if i + 1 < len(steps):
                x = self._renoise(x0, self.schedule.sigma(steps[i + 1]), generator)
            i += 1
        return x0, text_kv

    def commit(self, x0: Tensor, text_kv: Tensor) -> None:
        """Clean-context pass: overwrite the block's KV slots with keys/values of its x0 at t = 0, then advance."""
        self._call(x0, 0.0, text_kv, refresh=True)
        self.frame += x0.shape[1]
        self.blocks_done += 1

    def stream(self, noise: Tensor, text: Tensor | TextSchedule, generator: torch.Generator) -> Iterator[Tensor]:
        """Yield the x0 of each block of `noise` [B, F, C, h, w] as soon as it exists.

        `text` is one prompt's cross-attention K/V, or a `TextSchedule` looked up at each block's first latent frame
        (and before each step, where it has step positions). The clean-context pass after the last block is skipped:
        nothing reads it.
        """
        n = noise.shape[1]
        if n % self.block_frames:
            raise ValueError(f"{n} latent frames is not a whole number of {self.block_frames}-frame blocks")
        for i in range(0, n, self.block_frames):
            x0, text_kv = self.denoise_block(noise[:, i:i + self.block_frames], text, generator)
            self._uncommitted = (x0, text_kv) if i + self.block_frames < n else None
            yield x0
            self.commit_now()

    def commit_now(self) -> None:
        """Run the clean pass of the block just yielded now, if it has not run: the caller, once it has queued that
        block's decode, lets the GPU do it before the host waits for pixels or for playback, so the next block (and a
        prompt landing at it) need not wait for it."""
        if self._uncommitted is not None:
            x0, text_kv = self._uncommitted
            self._uncommitted = None
            self.commit(x0, text_kv)
