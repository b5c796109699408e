"""LoHa (LyCORIS): dW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank, a Hadamard product of two low-rank pairs.

Reaches a rank up to rank^2 with the parameters of two rank-r LoRAs. Saved under LyCORIS's names
(`hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`, `alpha`) with LyCORIS's init: w2_a is zero,
so an untrained module changes nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from traintrain.networks.base import WeightDeltaModule, flat_weight_shape


class LoHaModule(WeightDeltaModule):
    # Scaling one factor of each pair by sqrt(s) scales their product dW by s.
    strength_tensors = ("hada_w1_a", "hada_w2_a")

    def __init__(
        self, lora_name: str, org_module: nn.Linear | nn.Conv2d, rank: int, alpha: float, dtype=torch.float32
    ):
        super().__init__(lora_name, org_module)
        out_dim, in_dim = flat_weight_shape(org_module)
        self.rank = rank
        self.hada_w1_a = nn.Parameter(torch.empty(out_dim, rank))
        self.hada_w1_b = nn.Parameter(torch.empty(rank, in_dim))
        self.hada_w2_a = nn.Parameter(torch.empty(out_dim, rank))
        self.hada_w2_b = nn.Parameter(torch.empty(rank, in_dim))
        alpha = rank if alpha in (None, 0) else alpha
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        nn.init.normal_(self.hada_w1_a, std=0.1)
        nn.init.normal_(self.hada_w1_b, std=1.0)
        nn.init.zeros_(self.hada_w2_a)
        nn.init.normal_(self.hada_w2_b, std=1.0)
        self.to(dtype)

    def delta_weight(self) -> torch.Tensor:
        product = (self.hada_w1_a @ self.hada_w1_b) * (self.hada_w2_a @ self.hada_w2_b)
        return product.reshape(self.org_module[0].weight.shape) * (self.alpha / self.rank)

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "hada_w1_a": self.hada_w1_a,
            "hada_w1_b": self.hada_w1_b,
            "hada_w2_a": self.hada_w2_a,
            "hada_w2_b": self.hada_w2_b,
            "alpha": self.alpha,
        }
