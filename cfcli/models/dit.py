"""The causal Wan2.1 DiT (Causal Forcing / Self Forcing generators) with KV-cache inference.

Parameter names are the official ones (`blocks.0.self_attn.q`, `ffn.0`, `head.head`, ...) so checkpoints load
strictly. Precision: every Linear, modulation product and residual add runs in the module's dtype (the official
bf16 behaviour: upstream Wan's float32 autocast is disabled in the released code); the time sinusoid is computed in
float64; q/k RMS norms normalise in float32; RoPE rotates in float32.
"""

import math
import re
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cfcli.models.cache import DiTCache
from cfcli.ops.attention import attend
from cfcli.ops.linear import linear_gelu
from cfcli.ops.norm import layer_norm, rms_norm
from cfcli.ops.rope import apply_rope, rope_table
from cfcli.ops.split_attention import attend_long


ROPE_MEMO = 16  # tables kept: every position a block's steps and the rolling window revisit

# The Linears that run on every call's tokens, where a lower-precision matmul pays off (`--quantize fp8`): per block
# the self-attention q/k/v/o, the cross-attention q/o (its k/v run once per prompt, in `CausalWanDiT.text_kv`) and the
# FFN. Not the patch/text/time embeddings, time projection or head.
HOT_LINEARS = re.compile(r"(?:.+\.)?blocks\.\d+\.(?:self_attn\.[qkvo]|cross_attn\.[qo]|ffn\.[02])")


# Every Linear of every block (the cross-attention K/V too: they hold a tenth of the block weights), what the low
# memory plans store in 8 bits (`cfcli.ops.weight_quant`).
BLOCK_LINEARS = re.compile(r"(?:.+\.)?blocks\.\d+\.(?:self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.[02])")


def hot_linear(name: str, linear: nn.Module) -> bool:
    """Whether the DiT's Linear `name` is one of `HOT_LINEARS` (the filter `Engine.quantize` hands `quantize_fp8_`)."""
    return HOT_LINEARS.fullmatch(name) is not None


def block_linear(name: str, linear: nn.Module) -> bool:
    """Whether `linear` is an `nn.Linear` of a DiT block (`BLOCK_LINEARS`; the filter of `quantize_int8_`)."""
    return isinstance(linear, nn.Linear) and BLOCK_LINEARS.fullmatch(name) is not None


@dataclass(frozen=True)
class DiTConfig:
    """Sizes of the DiT; defaults are Wan2.1-T2V-1.3B."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    text_dim: int = 4096
    freq_dim: int = 256
    text_len: int = 512
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    rope_frames: int = 1024  # latent frame positions of the official RoPE table (its longest video)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class LayerNorm(nn.Module):
    """LayerNorm with optional affine parameters (the official `norm3` has them, `norm1/2` and the head's don't)."""

    def __init__(self, dim: int, eps: float, affine: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm(x, self.eps, self.weight, self.bias)


class SelfAttention(nn.Module):
    def __init__(self, cfg: DiTConfig, layer: int):
        super().__init__()
        self.layer, self.heads = layer, cfg.num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(cfg.dim, cfg.eps), RMSNorm(cfg.dim, cfg.eps)
        self.split_kv_sms: int | None = None  # split-KV attention sized for this many SMs (`CausalWanDiT.use_kernels`)
        self.sdpa: list | None = None  # SDPA kernels to prefer (`CausalWanDiT.use_kernels`); None: PyTorch chooses

    def qkv(self, x: Tensor, rope: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Roped queries and keys, un-roped keys and values of tokens x [B, N, dim], each [B, N, heads, head_dim]."""
        heads = (self.heads, -1)
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, heads), rope)
        raw_k = self.norm_k(self.k(x)).unflatten(-1, heads)
        return q, apply_rope(raw_k, rope), raw_k, self.v(x).unflatten(-1, heads)

    def attend_cached(self, q: Tensor, k: Tensor, v: Tensor, raw_k: Tensor, cache: DiTCache | None) -> Tensor:
        """Store k/v in the cache and attend to what it holds; [B, N, heads·head_dim], before the output layer."""
        if cache is not None:
            k, v = cache.update(self.layer, k, v, raw_k)
        if self.split_kv_sms is not None:
            return attend_long(q, k, v, self.split_kv_sms, self.sdpa).flatten(2)
        return attend(q, k, v, backends=self.sdpa).flatten(2)


class CrossAttention(nn.Module):
    """Text cross-attention; no mask: all `text_len` positions (padding included) are attended, as trained."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.heads = cfg.num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(cfg.dim, cfg.eps), RMSNorm(cfg.dim, cfg.eps)
        self.sdpa: list | None = None  # SDPA kernels to prefer (`CausalWanDiT.use_kernels`); None: PyTorch chooses

    def kv(self, ctx: Tensor) -> Tensor:
        """Keys and values of the embedded text, stacked [2, B, text_len, heads, head_dim]."""
        heads = (self.heads, -1)
        return torch.stack([self.norm_k(self.k(ctx)).unflatten(-1, heads), self.v(ctx).unflatten(-1, heads)])

    def forward(self, x: Tensor, kv: Tensor) -> Tensor:
        q = self.norm_q(self.q(x)).unflatten(-1, (self.heads, -1))
        return self.o(attend(q, kv[0], kv[1], backends=self.sdpa).flatten(2))


class Block(nn.Module):
    """Modulated pre-norm block: self-attention and FFN gated by the timestep, cross-attention ungated."""

    def __init__(self, cfg: DiTConfig, layer: int):
        super().__init__()
        self.norm1 = LayerNorm(cfg.dim, cfg.eps)
        self.self_attn = SelfAttention(cfg, layer)
        self.norm3 = LayerNorm(cfg.dim, cfg.eps, affine=True)
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = LayerNorm(cfg.dim, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, cfg.dim))
        self.fused_gelu = False  # the FFN's up-projection and GELU as one GEMM (`CausalWanDiT.use_kernels`)

    def forward(self, x: Tensor, e0: Tensor, text_kv: Tensor, rope: Tensor, cache: DiTCache | None) -> Tensor:
        # x [B, F, S, dim] (tokens grouped per latent frame); e0 [B, F, 6, dim] -> six [B, F, 1, dim] vectors.
        # Three stages: the middle one reads and writes the KV cache; the other two are pure functions of tensors
        # of fixed shape, which is what lets `cfcli.pipeline.fast` compile them.
        q, k, raw_k, v = self.project(x, e0, rope)
        y = self.self_attn.attend_cached(q, k, v, raw_k, cache)
        return self.finish(x, y, e0, text_kv)

    def project(self, x: Tensor, e0: Tensor, rope: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Modulated norm and self-attention projections: (q, k, raw_k, v)."""
        shift1, scale1 = (self.modulation[:, :2].unsqueeze(1) + e0[:, :, :2]).chunk(2, dim=2)
        return self.self_attn.qkv((self.norm1(x) * (1 + scale1) + shift1).flatten(1, 2), rope)

    def finish(self, x: Tensor, y: Tensor, e0: Tensor, text_kv: Tensor) -> Tensor:
        """Self-attention output and gated residual, cross-attention, gated FFN."""
        gate1, shift2, scale2, gate2 = (self.modulation[:, 2:].unsqueeze(1) + e0[:, :, 2:]).chunk(4, dim=2)
        x = x + self.self_attn.o(y).view_as(x) * gate1
        x = x + self.cross_attn(self.norm3(x).flatten(1, 2), text_kv).view_as(x)
        return x + self.feed_forward(self.norm2(x) * (1 + scale2) + shift2) * gate2

    def feed_forward(self, x: Tensor) -> Tensor:
        if self.fused_gelu:
            up, _, down = self.ffn
            return down(linear_gelu(x, up.weight, up.bias))
        return self.ffn(x)


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, cfg.eps)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        shift, scale = (self.modulation.unsqueeze(1) + e.unsqueeze(2)).chunk(2, dim=2)
        return self.head(self.norm(x) * (1 + scale) + shift)


def timestep_sinusoid(t: Tensor, dim: int) -> Tensor:
    """[cos, sin] features of the float timesteps, frequencies 10000^(-j/half), computed in float64."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.double().flatten(), freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def _bind_slot(slot: Block, block: Block) -> None:
    """A device slot holding `block`'s weights attends with `block`'s KV-cache layer."""
    slot.self_attn.layer = block.self_attn.layer


class CausalWanDiT(nn.Module):
    """Wan2.1 DiT run block-causally: each call denoises one block of latent frames against the KV cache."""

    def __init__(self, cfg: DiTConfig = DiTConfig()):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.head = Head(cfg)
        self._rope: OrderedDict[tuple, Tensor] = OrderedDict()  # small LRU of RoPE tables by position

    def use_kernels(self, split_kv_sms: int | None = None, fused_gelu: bool = False, sdpa: list | None = None) -> None:
        """Faster kernels for the same arithmetic, chosen by the caller (`cfcli.pipeline.fast.use_dit_kernels`); the
        defaults are the reference ops. `split_kv_sms`: self-attention split across the keys for a GPU of that many
        SMs (`cfcli.ops.split_attention`); `fused_gelu`: each FFN's up-projection and GELU in one GEMM
        (`cfcli.ops.linear`), in the blocks whose up-projection is still an `nn.Linear` (not quantised); `sdpa`: the
        attention kernels to prefer (`cfcli.ops.attention.preferred_backends`)."""
        for blk in self.distinct_blocks():
            blk.self_attn.split_kv_sms = split_kv_sms
            blk.self_attn.sdpa = blk.cross_attn.sdpa = sdpa
            blk.fused_gelu = fused_gelu and type(blk.ffn[0]) is nn.Linear

    def distinct_blocks(self) -> list[nn.Module]:
        """Every block module that runs, once: `blocks`, or with offloaded blocks (`cfcli.models.offload`) the
        resident ones and the stream's device slots."""
        return self.blocks.distinct() if hasattr(self.blocks, "distinct") else list(self.blocks)

    def text_projections(self) -> list[nn.Module]:
        """The cross-attention K/V projections of every block: run once per prompt (`text_kv`), so a small memory plan
        may keep them in host memory (`cfcli.models.offload.Parked`)."""
        return [m for b in self.blocks for m in (b.cross_attn.k, b.cross_attn.v)]

    def offload_blocks(self, count: int) -> int:
        """Keep the last `count` blocks in host memory, streamed in per call (`cfcli.models.offload`); how many."""
        from cfcli.models.offload import offload_blocks_

        return offload_blocks_(self, count, bind=_bind_slot)

    def frame_tokens(self, height: int, width: int) -> int:
        """Tokens per latent frame of `height`×`width` latents (1560 at 60×104)."""
        _, ph, pw = self.cfg.patch_size
        return (height // ph) * (width // pw)

    def text_kv(self, context: Tensor) -> Tensor:
        """Cross-attention K/V of every layer for umT5 features [B, L ≤ text_len, text_dim]: computed once per prompt.

        Returns [layers, 2, B, text_len, heads, head_dim]. Shorter context is zero-padded to `text_len` (the padded
        rows still become a non-zero embedding that the model attends to, as trained).
        """
        pad = self.cfg.text_len - context.shape[1]
        if pad > 0:
            context = torch.nn.functional.pad(context, (0, 0, 0, pad))
        ctx = self.text_embedding(context.to(self.patch_embedding.weight.dtype))
        return torch.stack([blk.cross_attn.kv(ctx) for blk in self.blocks])

    def rope(self, start_frame: int, frames: int, height: int, width: int) -> Tensor:
        """RoPE table for the tokens of frames `[start_frame, start_frame + frames)`; memoised per position."""
        _, ph, pw = self.cfg.patch_size
        key = (start_frame, frames, height // ph, width // pw)
        table = self._rope.get(key)
        if table is None:
            table = rope_table(self.cfg.head_dim, range(start_frame, start_frame + frames), key[2], key[3],
                               self.patch_embedding.weight.device)
            self._rope[key] = table
            if len(self._rope) > ROPE_MEMO:
                self._rope.popitem(last=False)
        else:
            self._rope.move_to_end(key)
        return table

    def forward(self, x: Tensor, t: Tensor, text_kv: Tensor, cache: DiTCache | None, start_frame: int,
                refresh: bool = False) -> Tensor:
        """Flow prediction (ε − x0) for latents x [B, F, C, h, w] at per-frame timesteps t [B, F]; `refresh`: a clean
        pass, whose keys/values the cache keeps (`DiTCache.begin`)."""
        with self.prepared(x, cache, start_frame, refresh) as rope:
            return self.denoise(x, t, text_kv, rope, cache)

    @contextmanager
    def prepared(self, x: Tensor, cache: DiTCache | None, start_frame: int,
                 refresh: bool = False) -> Iterator[Tensor]:
        """What a call settles on the host around its tensor work (`denoise`): yields the RoPE table of its frames
        with the cache's slots planned, and commits the plan once the work is done (not if it raised). Shared with
        the CUDA-graph wrapper (`cfcli.pipeline.fast.GraphedDiT`), which replays `denoise` per plan."""
        f, h, w = x.shape[1], x.shape[3], x.shape[4]
        rope = self.rope(start_frame, f, h, w)
        if cache is not None:
            cache.begin(start_frame, f, refresh)
        yield rope
        if cache is not None:
            cache.end()

    def denoise(self, x: Tensor, t: Tensor, text_kv: Tensor, rope: Tensor, cache: DiTCache | None) -> Tensor:
        """`forward` once the RoPE table is looked up and the cache's slots are planned (`prepared`): patch and time
        embeddings, the blocks, the head. Tensor work only, so one call can be captured in a CUDA graph and replayed
        for any call with the same plan (`cfcli.pipeline.fast`)."""
        b, f = x.shape[:2]
        tokens = self.patch_embedding(x.transpose(1, 2))  # [B, dim, F, h/2, w/2]
        gh, gw = tokens.shape[-2:]
        tokens = tokens.flatten(3).permute(0, 2, 3, 1)  # [B, F, S, dim], row-major tokens inside a frame
        e = self.time_embedding(timestep_sinusoid(t, self.cfg.freq_dim).to(tokens.dtype))
        e0 = self.time_projection(e).unflatten(-1, (6, -1)).unflatten(0, (b, f))  # [B, F, 6, dim]
        e = e.unflatten(0, (b, f))
        for blk, kv in zip(self.blocks, text_kv):
            tokens = blk(tokens, e0, kv, rope, cache)
        return self.unpatchify(self.head(tokens, e), gh, gw)

    def unpatchify(self, out: Tensor, gh: int, gw: int) -> Tensor:
        """[B, F, S, p·q·r·C] head output -> [B, F, C, gh·q, gw·r] latents (patch channels ordered p, q, r, C)."""
        b, f = out.shape[:2]
        p, q, r = self.cfg.patch_size
        c = self.cfg.out_dim
        out = out.view(b, f, gh, gw, p, q, r, c).permute(0, 1, 4, 7, 2, 5, 3, 6)
        return out.reshape(b, f * p, c, gh * q, gw * r)
