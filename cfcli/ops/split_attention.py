"""Self-attention over a long key set, split across more thread blocks (split-KV), on Hopper GPUs.

The caller chooses it (`cfcli.models.dit.SelfAttention.split_kv_sms`, set by `cfcli.pipeline.fast` where
`split_sms` says it runs); nothing here looks at the device on its own.

cuDNN's attention kernel gives each thread block 64 queries of one head. A frame-wise DiT call has 1560 queries and
12 heads: 300 blocks for 132 SMs, so the last of its ~2.3 waves runs mostly empty and the kernel runs well below the
rate it reaches at 4680 queries (figures in docs/performance.md). Splitting the keys into S equal parts, run as a
batch of S against the same queries, gives S times the blocks; each part returns its output and log-sum-exp, and
`merge_partials` weighs the parts into the exact softmax over all keys:

    out = Σᵢ exp(lseᵢ − lse) · outᵢ,   lse = log Σᵢ exp(lseᵢ)

Frame-wise calls gain most (up to 4 parts), chunk-wise ones less (2 parts); timings in docs/performance.md. Each
part's output is rounded to bf16 before the float32 merge: one extra rounding.
"""

import functools

import torch
from torch import Tensor

from cfcli.ops.attention import attend
from cfcli.ops.triton_rows import available, tiling

QUERY_TILE = 64  # queries per thread block of cuDNN's Hopper attention kernel
WAVES = 8  # split until the blocks fill about this many waves of the GPU's SMs
MIN_PART = 2048  # keys per part below which the merge costs more than the balance gains
MAX_SPLITS = 4


def kv_splits(queries: int, keys: int, heads: int, sms: int) -> int:
    """Parts to split `keys` into (1: no split) for one sequence of `queries` queries and `heads` heads on `sms` SMs."""
    blocks = heads * -(-queries // QUERY_TILE)
    for splits in range(1, MAX_SPLITS + 1):
        if blocks * splits >= WAVES * sms:
            break
    while splits > 1 and (keys % splits or keys // splits < MIN_PART):
        splits -= 1
    return splits


def split_sms(device: torch.device, dtype: torch.dtype) -> int | None:
    """The SM count to size splits for where the split path runs: a CUDA device of compute capability 9.0+ (where it
    was measured), half precision (cuDNN attention's), PyTorch with cuDNN attention; else None."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return None
    return _sms(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _sms(index: int) -> int | None:
    props = torch.cuda.get_device_properties(index)
    has_op = hasattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention")
    return props.multi_processor_count if (props.major, props.minor) >= (9, 0) and has_op else None


def attend_long(q: Tensor, k: Tensor, v: Tensor, sms: int, backends: list | None = None) -> Tensor:
    """`attend(q, k, v)` for one sequence (q [1, N, H, D], k/v [1, K, H, D] in half precision on a GPU of `sms` SMs
    that `split_sms` accepts, keys contiguous along K as a KV cache slice is), split across more thread blocks where
    the shapes gain from it (`kv_splits`); else plain `attend` (with `backends`)."""
    n, heads, dim = q.shape[1:]
    keys = k.shape[1]
    splits = kv_splits(n, keys, heads, sms) if q.shape[0] == 1 else 1
    if splits == 1 or not (k[0].is_contiguous() and v[0].is_contiguous()):
        return attend(q, k, v, backends=backends)
    parts = (splits, keys // splits, heads, dim)
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q.expand(splits, n, heads, dim).transpose(1, 2), k.view(parts).transpose(1, 2), v.view(parts).transpose(1, 2),
        None, True)[:2]  # (attn_bias, compute_log_sumexp)
    return merge_partials(out.transpose(1, 2), lse.view(splits, heads, n))


def merge_partials(out: Tensor, lse: Tensor) -> Tensor:
    """Attention outputs over S parts of the keys, out [S, N, H, D], with their log-sum-exps lse [S, H, N] (float32)
    -> the attention over all of them, [1, N, H, D] in out's dtype (float32 arithmetic or wider, one rounding)."""
    if available(out) and out.stride(-1) == 1:
        return _merge_triton(out, lse)
    acc = torch.promote_types(out.dtype, torch.float32)
    weights = torch.softmax(lse.to(acc), dim=0).transpose(1, 2).unsqueeze(-1)  # [S, N, H, 1]
    return (out.to(acc) * weights).sum(0, keepdim=True).to(out.dtype)


def _merge_triton(out: Tensor, lse: Tensor) -> Tensor:
    splits, n, heads, dim = out.shape
    merged = torch.empty(1, n, heads, dim, dtype=out.dtype, device=out.device)
    rows = n * heads  # one row = one query's one head
    grid, blocks = tiling(rows, dim)
    lse = lse.float()
    _build()[grid](out, lse, merged, rows, heads, *out.stride()[:3], *lse.stride(), SPLITS=splits, DIM=dim, **blocks)
    return merged


@functools.cache
def _build():
    import triton
    import triton.language as tl

    @triton.jit
    def merge_partials_rows(out_ptr, lse_ptr, merged_ptr, n_rows, heads, so_s, so_n, so_h, sl_s, sl_h, sl_n,
                            SPLITS: tl.constexpr, DIM: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_C)[None, :]
        ok = rows < n_rows
        query, head = rows // heads, rows % heads
        top = tl.full([ROWS], float("-inf"), tl.float32)
        for i in tl.static_range(SPLITS):
            top = tl.maximum(top, tl.load(lse_ptr + i * sl_s + head * sl_h + query * sl_n, mask=ok, other=0.0))
        total = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, BLOCK_C], tl.float32)
        mask = ok[:, None] & (cols < DIM)
        for i in tl.static_range(SPLITS):
            w = tl.exp(tl.load(lse_ptr + i * sl_s + head * sl_h + query * sl_n, mask=ok, other=0.0) - top)
            part = tl.load(out_ptr + i * so_s + (query * so_n + head * so_h)[:, None] + cols, mask=mask, other=0.0)
            acc += w[:, None] * part.to(tl.float32)
            total += w
        tl.store(merged_ptr + rows[:, None].to(tl.int64) * DIM + cols, (acc / total[:, None]).to(
            merged_ptr.dtype.element_ty), mask=mask)

    return merge_partials_rows
