"""3-axis rotary position embedding of the Wan DiT (frame, height, width), interleaved-pair convention.

Each head's `head_dim` channels form `head_dim/2` complex pairs `(c[2j], c[2j+1])`, split between the axes as the
official code does: time gets `head_dim - 4·(head_dim//6)` channels, height and width `2·(head_dim//6)` each.
Angles are computed in float64 (as the reference does) and the rotation runs in float32.
"""

import torch
from torch import Tensor

THETA = 10000.0


def axis_channels(head_dim: int) -> tuple[int, int, int]:
    """Real channels per axis (time, height, width); 44/42/42 for head_dim 128."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _inv_freq(channels: int, device=None) -> Tensor:
    return 1.0 / THETA ** (torch.arange(0, channels, 2, dtype=torch.float64, device=device) / channels)


def rope_angles(head_dim: int, frames: range, height: int, width: int, device=None) -> Tensor:
    """Angles [frames·height·width, head_dim/2] (float64) for tokens in row-major (f, y, x) order.

    Built directly on `device` (no host-to-device copy, so nothing waits for the GPU)."""
    ct, ch, cw = axis_channels(head_dim)
    f = torch.arange(frames.start, frames.stop, dtype=torch.float64, device=device)
    y = torch.arange(height, dtype=torch.float64, device=device)
    x = torch.arange(width, dtype=torch.float64, device=device)
    nf, nh, nw = len(f), height, width
    at = torch.outer(f, _inv_freq(ct, device))[:, None, None].expand(nf, nh, nw, -1)
    ah = torch.outer(y, _inv_freq(ch, device))[None, :, None].expand(nf, nh, nw, -1)
    aw = torch.outer(x, _inv_freq(cw, device))[None, None, :].expand(nf, nh, nw, -1)
    return torch.cat([at, ah, aw], dim=-1).reshape(nf * nh * nw, -1)


def rope_table(head_dim: int, frames: range, height: int, width: int, device) -> Tensor:
    """cos and sin of `rope_angles`, stacked [2, N, 1, head_dim/2] in float32, ready for `apply_rope`."""
    a = rope_angles(head_dim, frames, height, width, device)
    return torch.stack([a.cos(), a.sin()]).float()[:, :, None, :]


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate x [B, N, H, D] by `table` [2, N, 1, D/2]; float32 math, result in x's dtype."""
    cos, sin = table[0], table[1]
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).type_as(x)
