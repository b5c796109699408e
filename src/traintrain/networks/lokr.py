"""LoKr (LyCORIS): dW = kron(w1, w2) * alpha / rank, a Kronecker product of a small and a large factor.

The layer's (out, in) are each split into two factors as close to a square as possible (LyCORIS's
`factorization`, factor -1): out = a*b, in = c*d, w1 is (a, c) and w2 (b, d[, k, k]). w2 is a
rank-r product `lokr_w2_a @ lokr_w2_b` when r < max(b, d) / 2, else a full `lokr_w2`; with both
factors full LyCORIS fixes the scale at 1 (alpha = rank). LyCORIS's init: w2 (or w2_b) is zero, so
an untrained module changes nothing.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from traintrain.networks.base import WeightDeltaModule


def factorization(dimension: int) -> tuple[int, int]:
    """(m, n) with m * n = dimension, m <= n, m + n smallest (LyCORIS's split with factor -1)."""
    best = (1, dimension)
    for m in range(2, math.isqrt(dimension) + 1):
        if dimension % m == 0:
            best = (m, dimension // m)
    return best


class LoKrModule(WeightDeltaModule):
    def __init__(
        self, lora_name: str, org_module: nn.Linear | nn.Conv2d, rank: int, alpha: float, dtype=torch.float32
    ):
        super().__init__(lora_name, org_module)
        weight_shape = org_module.weight.shape
        (a, b), (c, d) = factorization(weight_shape[0]), factorization(weight_shape[1])
        kernel = tuple(weight_shape[2:])
        self.rank = rank
        self.full_w2 = rank >= max(b, d) / 2
        # sqrt(s) on each Kronecker factor scales dW by s.
        self.strength_tensors = ("lokr_w1", "lokr_w2" if self.full_w2 else "lokr_w2_a")
        self.lokr_w1 = nn.Parameter(torch.empty(a, c))
        if self.full_w2:
            self.lokr_w2 = nn.Parameter(torch.empty(b, d, *kernel))
            alpha = rank  # LyCORIS: both factors full, scale 1
        else:
            self.lokr_w2_a = nn.Parameter(torch.empty(b, rank))
            self.lokr_w2_b = nn.Parameter(torch.empty(rank, d * math.prod(kernel)))
        alpha = rank if alpha in (None, 0) else alpha
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        nn.init.kaiming_uniform_(self.lokr_w1, a=math.sqrt(5))
        if self.full_w2:
            nn.init.zeros_(self.lokr_w2)
        else:
            nn.init.kaiming_uniform_(self.lokr_w2_a, a=math.sqrt(5))
            nn.init.zeros_(self.lokr_w2_b)
        self.to(dtype)

    def delta_weight(self) -> torch.Tensor:
        shape = self.org_module[0].weight.shape
        w2: torch.Tensor
        if self.full_w2:
            w2 = self.lokr_w2
            w1 = self.lokr_w1.reshape(*self.lokr_w1.shape, *[1] * (w2.ndim - 2))
        else:
            w2, w1 = self.lokr_w2_a @ self.lokr_w2_b, self.lokr_w1
        return torch.kron(w1, w2).reshape(shape) * (self.alpha / self.rank)

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {"lokr_w1": self.lokr_w1}
        if self.full_w2:
            tensors["lokr_w2"] = self.lokr_w2
        else:
            tensors |= {"lokr_w2_a": self.lokr_w2_a, "lokr_w2_b": self.lokr_w2_b}
        return tensors | {"alpha": self.alpha}
