"""Domain-adaptation building blocks shared by the models: gradient reversal and kernel MMD."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class GradReverse(torch.autograd.Function):
    """Identity on the forward pass; multiplies the gradient by ``-coeff`` on the way back (DANN)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Gradient reversal layer (Ganin & Lempitsky 2015)."""
    return GradReverse.apply(x, coeff)


def mmd(a: torch.Tensor, b: torch.Tensor, rng: np.random.Generator, max_n: int = 512) -> torch.Tensor:
    """Squared MMD with a mixture of Gaussian kernels (bandwidths around the median distance).

    Each side is subsampled to at most ``max_n`` rows, so the cost per call is bounded.
    """
    if len(a) > max_n:
        a = a[torch.as_tensor(rng.choice(len(a), max_n, replace=False), device=a.device)]
    if len(b) > max_n:
        b = b[torch.as_tensor(rng.choice(len(b), max_n, replace=False), device=b.device)]
    z = torch.cat([a, b])
    d = torch.cdist(z, z).pow(2)
    bw = d.detach().median().clamp_min(1e-6)
    k = sum(torch.exp(-d / (bw * s)) for s in (0.25, 0.5, 1.0, 2.0, 4.0))
    n = len(a)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()
