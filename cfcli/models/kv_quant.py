"""The causal KV cache stored in 8 bits: `KVCache`'s slots and semantics, half (bf16) or a quarter (float32) the bytes.

Each stored key/value vector (one token, one head: `head_dim` numbers) gets its own scale, `amax / QMAX` rounded up
to the compute dtype, kept beside it; the vector is stored as int8 (rounded) or float8 e4m3 (`fmt`). Per-token-per-head
scales follow the outliers of RoPE'd keys, which differ by head and position, at 2 bytes (bf16) per `head_dim` values
(1.6 % for 128). Quantising with the rounded scale makes `q · scale` in the compute dtype the only rounding on read.

`update` quantises the call's keys/values into their slots and returns the read slice dequantised to the compute
dtype (one layer at a time: the transient is one layer's window, not the cache). Used by the `low` memory plans
(`cfcli.pipeline.memory`); numerics against the bf16 cache are measured in tests/test_lowvram.py.
"""

import torch
from torch import Tensor

from cfcli.models.kv_cache import KVCache

FORMATS = {"int8": (torch.int8, 127.0), "fp8": (torch.float8_e4m3fn, 448.0)}


class QuantKVCache(KVCache):
    """`KVCache` with 8-bit storage; `dtype` is what `update` returns (the model's compute dtype)."""

    def __init__(self, num_layers: int, batch: int, capacity: int, frame_tokens: int, heads: int, head_dim: int,
                 *, sink_frames: int = 0, rolling: bool = False, dtype=torch.float32, device="cpu", fmt: str = "int8"):
        self.frame_tokens = frame_tokens
        self.capacity = capacity * frame_tokens
        self.sink = sink_frames * frame_tokens
        self.rolling = rolling
        self.dtype = dtype
        self.store, self.qmax = FORMATS[fmt]
        shape = (num_layers, 2, batch, self.capacity, heads, head_dim)
        self.kv = torch.zeros(shape, dtype=self.store, device=device)
        self.scale = torch.ones(shape[:-1] + (1,), dtype=dtype, device=device)
        self.reset()

    def _quantize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        amax = x.abs().amax(dim=-1, keepdim=True).float()
        # Rounded up into the scale's dtype (one part in 2⁸ is above bf16's rounding), so nothing is clipped.
        scale = torch.where(amax > 0, amax / self.qmax * (1 + 2**-8), torch.ones_like(amax)).to(self.dtype)
        q = (x.float() / scale.float()).clamp(-self.qmax, self.qmax)
        return (q.round() if self.store == torch.int8 else q).to(self.store), scale

    def update(self, layer: int, k: Tensor, v: Tensor, raw_k: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self._plan
        buf, sc = self.kv[layer], self.scale[layer]
        if p.evict:
            src = slice(self.sink + p.evict, self.sink + p.evict + p.keep)
            dst = slice(self.sink, self.sink + p.keep)
            buf[:, :, dst] = buf[:, :, src].clone()
            sc[:, :, dst] = sc[:, :, src].clone()
        for i, x in enumerate((k, v)):
            buf[i, :, p.write], sc[i, :, p.write] = self._quantize(x)
        return self._read(buf[0, :, p.read], sc[0, :, p.read]), self._read(buf[1, :, p.read], sc[1, :, p.read])

    def _read(self, q: Tensor, scale: Tensor) -> Tensor:
        return q.to(self.dtype) * scale

    @staticmethod
    def nbytes(num_layers: int, batch: int, capacity_tokens: int, heads: int, head_dim: int, fmt: str = "int8",
               dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes of the buffers a cache of this size holds (for the memory planner)."""
        store, _ = FORMATS[fmt]
        values = num_layers * 2 * batch * capacity_tokens * heads
        return values * (head_dim * store.itemsize + dtype.itemsize)
