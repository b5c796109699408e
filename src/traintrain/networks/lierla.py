"""LoRA module ("lierla"; with k x k convs, "c3lier"/LoCon): W x + up(down(x)) * multiplier * alpha / rank."""

from __future__ import annotations

import math

import torch
from torch import nn

from traintrain.networks.base import AdapterModule


class LoRAModule(AdapterModule):
    """Low-rank update of one Linear or Conv2d layer, saved as lora_down / lora_up / alpha."""

    strength_tensors = ("lora_down.weight", "lora_up.weight")

    lora_down: nn.Conv2d | nn.Linear
    lora_up: nn.Conv2d | nn.Linear

    def __init__(
        self, lora_name: str, org_module: nn.Linear | nn.Conv2d, rank: int, alpha: float, dtype=torch.float32
    ):
        super().__init__(lora_name, org_module)
        if isinstance(org_module, nn.Conv2d):
            in_dim, out_dim = org_module.in_channels, org_module.out_channels
            rank = min(rank, in_dim, out_dim)
            # torch types a Conv2d's kernel_size/stride/padding/dilation as tuple[int, ...] but its
            # constructor as tuple[int, int]; the values come from a Conv2d, so they are pairs.
            self.lora_down = nn.Conv2d(
                in_dim,
                rank,
                org_module.kernel_size,  # type: ignore[arg-type]
                org_module.stride,  # type: ignore[arg-type]
                org_module.padding,  # type: ignore[arg-type]
                dilation=org_module.dilation,  # type: ignore[arg-type]
                bias=False,
            )
            self.lora_up = nn.Conv2d(rank, out_dim, 1, 1, bias=False)
        else:
            in_dim, out_dim = org_module.in_features, org_module.out_features
            rank = min(rank, in_dim, out_dim)
            self.lora_down = nn.Linear(in_dim, rank, bias=False)
            self.lora_up = nn.Linear(rank, out_dim, bias=False)
        self.rank = rank
        alpha = rank if alpha in (None, 0) else alpha
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.scale = float(alpha) / rank  # a Python number: reading the buffer each call would wait for the GPU
        # An untrained adapter must change nothing: random down, zero up (kohya's init).
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.to(dtype)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        lora_dtype = self.lora_down.weight.dtype
        return self.lora_up(self.lora_down(x.to(lora_dtype))) * (self.applied_multiplier() * self.scale)

    def load_saved_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_saved_tensors(tensors)
        if "alpha" not in tensors:  # diffusers / PEFT files (SD3's): no alpha means alpha = rank, a scale of 1
            self.alpha.fill_(float(self.rank))
        self.scale = float(self.alpha) / self.rank  # a file's alpha may differ from the one built with

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors under kohya's suffixes, in the layout A1111, ComfyUI and diffusers read."""
        return {
            "lora_down.weight": self.lora_down.weight,
            "lora_up.weight": self.lora_up.weight,
            "alpha": self.alpha,
        }
