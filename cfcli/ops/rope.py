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
    """e^{i·angle} of `rope_angles` as complex64 [N, 1, head_dim/2], ready for `apply_rope`."""
    a = rope_angles(head_dim, frames, height, width, device)
    return torch.polar(torch.ones_like(a), a).to(torch.complex64)[:, None, :]


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate x [B, N, H, D] by `table` [N, 1, D/2]: one complex multiply in float32, result in x's dtype.

    (c0 + i·c1)·(cos φ + i·sin φ) is exactly the pair rotation (c0·cos − c1·sin, c0·sin + c1·cos).
    """
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * table).flatten(-2).type_as(x)
