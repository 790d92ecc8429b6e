"""umT5-XXL text encoder (the encoder half only), as used by Wan2.1 / Causal Forcing.

A pre-norm T5 encoder: token embedding -> N x [RMS norm -> self-attention with a per-layer
relative-position bias -> residual; RMS norm -> gated GELU-tanh FFN -> residual] -> RMS norm.
Parameter names equal the official `wan/modules/t5.py` T5Encoder state dict (no prefix), so
`models_t5_umt5-xxl-enc-bf16.pth` loads with `strict=True`.

Precision follows the reference: RMS statistics and softmax in float32 whatever the module dtype;
everything else in the module dtype. The module holds no buffers, so it can be built on the meta
device and filled with `load_state_dict(sd, assign=True)` (the bf16 file then gives a bf16 module
without ever materialising random weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["T5Config", "UMT5Encoder", "encode_text", "relative_position_buckets"]


@dataclass(frozen=True)
class T5Config:
    """Encoder hyper-parameters; defaults are umT5-XXL (5,680,910,336 parameters)."""

    vocab: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32


# Relative distances beyond this share the last (log-spaced) bucket, as in T5.
_MAX_DISTANCE = 128


def relative_position_buckets(length: int, num_buckets: int, device=None) -> Tensor:
    """Bidirectional T5 bucket index [length, length] for query i / key j (distance j - i).

    Half the buckets per direction (keys after the query get the upper half); within a half,
    distances below a quarter of the buckets are exact, larger ones log-spaced up to 128.
    """
    pos = torch.arange(length, device=device)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    exact = half // 2
    dist = rel.abs()
    # Same float32 expression and op order as the reference, so the bucket edges (16, 32, 64)
    # land identically; clamp(min=1) only avoids log(0) for distance 0, which takes the exact branch.
    scaled = (torch.log(dist.clamp(min=1).float() / exact)
              / math.log(_MAX_DISTANCE / exact) * (half - exact))
    far = (exact + scaled.long()).clamp(max=half - 1)
    return (rel > 0).long() * half + torch.where(dist < exact, dist, far)


def _clamp_fp16(x: Tensor) -> Tensor:
    # The reference clamps the fp16 residual stream away from +-inf (a no-op for bf16/fp32).
    if x.dtype == torch.float16:
        limit = torch.finfo(torch.float16).max - 1000
        x = x.clamp(-limit, limit)
    return x


class RMSNorm(nn.Module):
    """T5LayerNorm: no mean subtraction, no bias; statistics always in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # x * fp32 rsqrt promotes to fp32; the reference rounds back only for half weights.
        y = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            y = y.to(self.weight.dtype)
        return self.weight * y


def embedding(num: int, dim: int) -> nn.Embedding:
    """`nn.Embedding(num, dim)`; on the meta device (the memory planner's models, weights loaded by assignment) without
    its random init, which there would import `torch._dynamo`: seconds of every fresh process."""
    if torch.get_default_device().type == "meta":
        return nn.Embedding(num, dim, _weight=torch.empty(num, dim))
    return nn.Embedding(num, dim)


class RelativePositionBias(nn.Module):
    """Learned per-head bias for each relative-position bucket (one per layer in umT5)."""

    def __init__(self, num_buckets: int, num_heads: int):
        super().__init__()
        self.embedding = embedding(num_buckets, num_heads)

    def forward(self, buckets: Tensor) -> Tensor:
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)  # [1, H, Lq, Lk]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, dim_attn: int, num_heads: int):
        super().__init__()
        assert dim_attn % num_heads == 0
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """x [B, L, dim]; bias [B, H, L, L] additive (position bias, padded keys at dtype-min)."""
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, self.num_heads, -1).transpose(1, 2)
                   for p in (self.q, self.k, self.v))
        # T5 folds 1/sqrt(d) into its weights, hence scale=1; SDPA's softmax runs in fp32.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        return self.o(out.transpose(1, 2).reshape(b, n, -1))


class GatedFFN(nn.Module):
    """fc2(fc1(x) * gelu_tanh(gate(x))); `gate` is a Sequential so its weight is `gate.0.weight`."""

    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim)
        self.attn = SelfAttention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = RMSNorm(cfg.dim)
        self.ffn = GatedFFN(cfg.dim, cfg.dim_ffn)
        self.pos_embedding = RelativePositionBias(cfg.num_buckets, cfg.num_heads)

    def forward(self, x: Tensor, buckets: Tensor, key_pad: Tensor) -> Tensor:
        """buckets [L, L] long; key_pad [B, 1, 1, L] bool, True for padded keys."""
        h = self.norm1(x)
        # Like the reference: bias in the activation dtype, padded keys overwritten by dtype-min
        # (finite, so even an all-padding row stays NaN-free).
        bias = self.pos_embedding(buckets).to(h.dtype)
        bias = bias.masked_fill(key_pad, torch.finfo(h.dtype).min)
        x = _clamp_fp16(x + self.attn(h, bias))
        return _clamp_fp16(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """The umT5 encoder stack; forward(ids [B, L], mask [B, L]) -> hidden states [B, L, dim]."""

    def __init__(self, cfg: T5Config = T5Config()):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Rows of padded positions are computed (not zeroed), as in the reference."""
        x = self.token_embedding(ids)
        # Buckets depend only on L: computed once and shared by every layer's own embedding.
        buckets = relative_position_buckets(ids.shape[1], self.cfg.num_buckets, ids.device)
        key_pad = (mask == 0)[:, None, None, :]
        for block in self.blocks:
            x = block(x, buckets, key_pad)
        return self.norm(x)


@torch.no_grad()
def encode_text(encoder: UMT5Encoder, ids: Tensor, mask: Tensor, text_len: int) -> Tensor:
    """[B, text_len] ids/mask -> [B, text_len, dim] with rows at/after each prompt's length exactly zero.

    Runs the encoder only on the real tokens (the longest prompt's length), then zero-pads to
    text_len: equal to the full text_len path within float tolerance (the relative position bias
    depends only on distance and padded keys get exactly zero attention weight). Assumes right
    padding (mask is a prefix of ones), as PromptTokenizer produces.
    """
    lens = mask.gt(0).sum(dim=1)
    n = max(int(lens.max()), 1)  # one host sync; >= 1 keeps an all-padding batch well-defined
    if n > text_len:
        raise ValueError(f"prompt has {n} tokens, more than text_len={text_len}")
    out = encoder(ids[:, :n], mask[:, :n])
    pad_rows = torch.arange(n, device=out.device)[None, :] >= lens[:, None]
    out = out.masked_fill(pad_rows[..., None], 0.0)
    return F.pad(out, (0, 0, 0, text_len - n))
