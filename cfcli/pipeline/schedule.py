"""The flow-matching timestep table (shift s, 1000 training steps) and the warped few-step lists.

Values are computed in float32 exactly as the official `FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True)`
does, so the DiT sees the same float timesteps (1000, 937.5, 833.3333129882812, 625 for shift 5).
"""

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

TRAIN_STEPS = 1000


@dataclass(frozen=True)
class FlowSchedule:
    shift: float = 5.0

    @cached_property
    def sigmas(self) -> torch.Tensor:
        base = torch.linspace(1.0, 0.0, TRAIN_STEPS + 1)[:-1]
        return self.shift * base / (1 + (self.shift - 1) * base)

    @cached_property
    def timesteps(self) -> torch.Tensor:
        return self.sigmas * TRAIN_STEPS

    def warp(self, steps: list[int]) -> list[float]:
        """Nominal steps (1…1000) -> the float timesteps the model was distilled on (`ext[1000 - s]`)."""
        if any(not 1 <= s <= TRAIN_STEPS for s in steps):
            raise ValueError(f"denoising steps must lie in 1…{TRAIN_STEPS}, got {steps}")
        return [float(self.timesteps[TRAIN_STEPS - s]) for s in steps]

    def sigma(self, t: float) -> float:
        """σ of the table entry nearest to timestep t (the official argmin lookup)."""
        return float(self.sigmas[(self.timesteps - t).abs().argmin()])


def flow_to_x0(x: Tensor, flow: Tensor, sigma: float | Tensor) -> Tensor:
    """x0 = x_t − σ·v, computed in float64 as the official wrapper does, returned in x's dtype.

    `sigma` is a Python float or a float64 tensor broadcasting over x (per-frame σ of the rolling window)."""
    return (x.double() - sigma * flow.double()).to(x.dtype)


def add_noise(x0: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
    """(1 − σ)·x0 + σ·ε in float32 with a float32 σ (the official table arithmetic), returned in x0's dtype.

    `sigma` is a float32 0-dim tensor: on the CPU it acts as a scalar (no copy to the GPU, nothing waits)."""
    return ((1 - sigma) * x0.float() + sigma * eps.float()).to(x0.dtype)
