"""The fast path on CUDA (`Engine.accelerate`): the DiT's faster kernels, compiled block stages, CUDA graphs of whole
DiT calls, a tuned VAE decoder; each an `EngineOptions` lever. None changes what is computed; only rounding moves
(measured in docs/performance.md).

- `use_dit_kernels(dit, ...)` turns on split-KV self-attention (`cfcli.ops.split_attention`) and the FFN's fused
  up-projection + GELU (`cfcli.ops.linear`) where they run: the DiT holds the choice (`CausalWanDiT.use_kernels`).

- `compile_blocks(dit)` compiles each block's two cache-free stages (`Block.project`: modulated norm, q/k/v, RMS norms
  and RoPE; `Block.finish`: output projection, gated residuals, cross-attention, FFN) with `torch.compile`, which fuses
  their ~60 elementwise kernels a layer into a few. The stage between them (KV-cache write and self-attention) stays
  eager. All 30 blocks share one compiled graph per stage and token count. Fusion keeps bf16 intermediates in
  float32 registers, so results move within bf16 rounding of the eager path.
- `GraphedDiT` wraps the DiT call of the block-causal sampler: the first call with a given KV-cache plan (the slots
  it writes and reads) runs eagerly, the second is captured into a CUDA graph, and every later call with that plan
  replays it — one launch instead of ~2,000. Inputs (latents, timesteps, RoPE table, text K/V) are copied into
  static buffers first; the graph writes the KV cache in place, exactly as the eager call. Bit-exact with eager.

- `tune_vae(vae)` swaps in the decoder's fast forms (`cfcli.models.vae_fast`): channels-last, its 96-channel causal
  convolutions as 2D convolutions over time-stacked channels (`cfcli.ops.time_taps`), its upsampling convolutions as
  sub-pixel convolutions (`cfcli.ops.subpixel`), each convolution's bias added inside a fused norm + SiLU or
  bias + residual kernel (`cfcli.ops.fused_norm`).

A frame-wise 81-frame video has 21 cache plans (one per block; its steps and clean pass share it), so the first video
captures 21 graphs and every later one with the same cache replays them. Calls on caches without a fixed plan (the
long-video rolling cache, which re-ropes its anchor per call: `plan_key()` is None) run eagerly.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from cfcli.models import vae_fast
from cfcli.models.cache import DiTCache
from cfcli.models.dit import CausalWanDiT
from cfcli.models.vae import CausalConv3d, ResidualBlock, RMSNorm, Upsample, WanVAE
from cfcli.ops import triton_rows
from cfcli.ops.attention import preferred_backends
from cfcli.ops.split_attention import split_sms


def use_dit_kernels(dit: CausalWanDiT, split_attention: bool, fused_gelu: bool,
                    cudnn_attention: bool = True) -> list[str]:
    """Turn on the DiT's faster kernels that run on its device and dtype; returns the levers that did. All are
    half-precision CUDA kernels; split-KV attention needs compute capability 9.0+ too (`split_sms`)."""
    weight = dit.patch_embedding.weight
    half = weight.is_cuda and weight.dtype in (torch.float16, torch.bfloat16)
    sms = split_sms(weight.device, weight.dtype) if split_attention else None
    sdpa = preferred_backends() if cudnn_attention and half else None
    dit.use_kernels(split_kv_sms=sms, fused_gelu=fused_gelu and half, sdpa=sdpa)
    return [name for name, on in (("cudnn_attention", sdpa is not None), ("split_attention", sms is not None),
                                  ("fused_gelu", any(blk.fused_gelu for blk in dit.distinct_blocks()))) if on]


def compile_blocks(dit: CausalWanDiT) -> None:
    """Compile every block's `project` and `finish` stages in place (the block's `forward` is unchanged).

    Each stage is one graph (no breaks), specialised per frame count: ≤ 5 shapes a stage for every sampler. Not
    `fullgraph=True`: a process that runs many presets could pass dynamo's recompile limit, and then the stages
    should fall back to eager rather than fail.
    """
    for blk in dit.distinct_blocks():  # offloaded blocks: each device slot once
        blk.project = torch.compile(blk.project, dynamic=False)
        blk.finish = torch.compile(blk.finish, dynamic=False)


def tune_vae(vae: WanVAE, fuse: bool, stack: bool | None = None, stack_below: int = 128) -> list[str]:
    """Swap the VAE decoder's fast forms in (`cfcli.models.vae_fast`); the same arithmetic, summed in another order.
    Returns the levers applied: "tuned_vae", and "fused_vae" where the fused kernels run.

    - Channels-last weights and activations (cuDNN's fastest convolutions, no layout conversion around each one).
    - With `stack`, its 3-tap causal convolutions narrower than `stack_below` channels run as 2D convolutions over
      time-stacked channels (`StackedTapsConv3d`): on Hopper cuDNN runs the 96-channel full-resolution ones on an
      sm80 kernel at a third of the 2D speed. The head (96 → 3) runs as a 2D convolution with the taps stacked as
      output channels instead (`TapOutputsConv3d`; timed in docs/performance.md).
      Default: on GPUs of compute capability 9.0 and newer, the ones it was measured on (docs/performance.md);
      elsewhere the stacking copy could cost more than it saves.
    - Each nearest-2× upsampling and the 3×3 convolution after it as four 2×2 convolutions on the small input
      (`SubpixelUpsample`): 2.25× fewer products, no upsampled copy.
    - With `fuse` where Triton is available, each RMS norm + SiLU pair, with the bias of the convolution before it,
      as one kernel, and each residual block's `h + bias + shortcut` as another (`cfcli.ops.fused_norm`).
    """
    vae_fast.channels_last_(vae)
    weight = vae.conv2.weight
    if stack is None:
        stack = weight.is_cuda and torch.cuda.get_device_capability(weight.device) >= (9, 0)
    for m in vae.decoder.modules():
        if isinstance(m, Upsample):
            vae_fast.swap_(m, vae_fast.SubpixelUpsample)
        elif stack and isinstance(m, CausalConv3d) and m.history == 2:
            if m.in_channels == m.out_channels < stack_below:
                vae_fast.swap_(m, vae_fast.StackedTapsConv3d)
            elif m.out_channels <= 4:
                vae_fast.swap_(m, vae_fast.TapOutputsConv3d)
    if not fuse or not triton_rows.available(weight):
        return ["tuned_vae"]
    for m in vae.decoder.modules():
        if isinstance(m, RMSNorm):
            vae_fast.swap_(m, vae_fast.FusedRMSNorm)
        elif isinstance(m, ResidualBlock):
            vae_fast.swap_(m, vae_fast.FusedResidualBlock)
    return ["tuned_vae", "fused_vae"]


class CudaGraphs:
    """Captures calls into CUDA graphs that share one memory pool; `GraphedDiT`'s default capturer."""

    def __init__(self):
        self.pool = None  # the first graph's, shared by the later ones
        self.stream = torch.cuda.Stream()

    def capture(self, fn: Callable[[], Tensor]) -> "CapturedCall":
        """Record `fn()` (capturing launches nothing); `replay()` runs it, its result lands in `.out`."""
        graph = torch.cuda.CUDAGraph()
        # On a side stream, "thread_local" so that the video writer's thread may wait on its events meanwhile.
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
            try:
                out = fn()
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(self.stream)
        if self.pool is None:
            self.pool = graph.pool()
        return CapturedCall(graph.replay, out)

    def reset(self) -> None:
        """Forget the pool once no graph uses it (PyTorch cannot share a pool none of whose graphs is alive), and
        give its memory back."""
        self.pool = None
        torch.cuda.empty_cache()


@dataclass
class CapturedCall:
    replay: Callable[[], None]
    out: Tensor  # overwritten by every replay


class GraphedDiT:
    """Callable like the DiT (`(x, t, text_kv, cache, start_frame) -> flow`), replaying CUDA graphs per cache plan.

    Graphs belong to one cache buffer: a call on another cache drops them. Reuse one cache across videos (as
    `Engine` does) to replay them from the second video on. `max_graphs` bounds how many are kept. `capturer` makes
    and replays the graphs (`CudaGraphs`; tests pass a CPU stand-in with the same contract).
    """

    def __init__(self, dit: CausalWanDiT, max_graphs: int = 64, capturer: "CudaGraphs | None" = None):
        self.dit = dit
        self.max_graphs = max_graphs
        self.capturer = capturer or CudaGraphs()
        self.graphs: dict[tuple, CapturedCall] = {}
        self.seen: set[tuple] = set()  # plans run once eagerly (the warm-up a capture needs)
        self.inputs: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}  # static x, t, rope by shape
        self.text: Tensor | None = None  # static text K/V
        self.text_src: Tensor | None = None  # the tensor last copied into it (held, so its identity stays valid)
        self.cache_buf: Tensor | None = None
        self.captures = self.replays = 0

    def __call__(self, x: Tensor, t: Tensor, text_kv: Tensor, cache: DiTCache | None, start_frame: int,
                 refresh: bool = False) -> Tensor:
        with self.dit.prepared(x, cache, start_frame, refresh) as rope:
            plan = None if cache is None else cache.plan_key()
            if plan is None:  # no cache, or a plan that no graph can replay: eagerly
                return self.dit.denoise(x, t, text_kv, rope, cache)
            return self._graphed(x, t, text_kv, rope, cache, plan)

    def _graphed(self, x: Tensor, t: Tensor, text_kv: Tensor, rope: Tensor, cache: DiTCache, plan: tuple) -> Tensor:
        """The call planned as `plan`: warmed up, captured or replayed."""
        if cache.kv is not self.cache_buf:
            self.reset()
            self.cache_buf = cache.kv
        key = (tuple(x.shape), x.dtype, tuple(t.shape), tuple(text_kv.shape), plan)
        sx, st, srope = self._load(x, t, text_kv, rope)
        entry = self.graphs.get(key)
        if entry is None and key not in self.seen:
            # Warm-up, eagerly on the very buffers the capture will use: anything done once per input (kernel
            # choice, compilation, autotuning) happens here, as capturing must not synchronise.
            self.seen.add(key)
            return self.dit.denoise(sx, st, self.text, srope, cache)
        if entry is None:
            entry = self._capture(key, sx, st, srope, cache)
        entry.replay()
        self.replays += 1
        return entry.out.clone()  # the static output is overwritten by the next replay

    def reset(self) -> None:
        """Drop every graph. The next capture starts a new pool: PyTorch cannot share a pool none of whose graphs
        is alive any more."""
        had_graphs = bool(self.graphs)
        self.graphs.clear()
        self.seen.clear()
        if had_graphs:
            self.capturer.reset()

    def _load(self, x: Tensor, t: Tensor, text_kv: Tensor, rope: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shape = (tuple(x.shape), tuple(t.shape), tuple(rope.shape))
        if shape not in self.inputs:
            self.inputs[shape] = (torch.empty_like(x), torch.empty_like(t), torch.empty_like(rope))
        sx, st, srope = self.inputs[shape]
        sx.copy_(x)
        st.copy_(t)
        srope.copy_(rope)
        if self.text is None or self.text.shape != text_kv.shape:
            self.reset()
            self.text = torch.empty_like(text_kv)
            self.text_src = None
        if text_kv is not self.text_src:
            self.text.copy_(text_kv)
            self.text_src = text_kv
        return sx, st, srope

    def _capture(self, key: tuple, x: Tensor, t: Tensor, rope: Tensor, cache) -> CapturedCall:
        if len(self.graphs) >= self.max_graphs:
            self.graphs.pop(next(iter(self.graphs)))
        text = self.text
        self.graphs[key] = entry = self.capturer.capture(lambda: self.dit.denoise(x, t, text, rope, cache))
        self.captures += 1
        return entry
