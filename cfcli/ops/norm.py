"""Normalisations with the official precision: statistics in float32, result in the input dtype."""

import torch
from torch import Tensor
import torch.nn.functional as F


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Wan's RMSNorm: normalise in float32, cast back, *then* scale by the weight (in the input dtype)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)).type_as(x) * weight


def layer_norm(x: Tensor, eps: float, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """LayerNorm over the last dim; PyTorch keeps float32 statistics inside the kernel for low precision inputs."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
