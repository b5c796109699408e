"""LoRA module ("lierla"; with k x k convs, "c3lier"/LoCon): W x + up(down(x)) * multiplier * alpha / rank.

Wraps an existing Linear or Conv2d by replacing its forward, so several adapters can stack on the
same layer (Difference mode keeps the copier applied under the difference LoRA) and each can be
removed again, newest first.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRAModule(nn.Module):
    """Low-rank update of one Linear or Conv2d layer, saved as lora_down / lora_up / alpha."""

    def __init__(self, lora_name: str, org_module: nn.Module, rank: int, alpha: float, dtype=torch.float32):
        super().__init__()
        self.lora_name = lora_name
        if isinstance(org_module, nn.Conv2d):
            in_dim, out_dim = org_module.in_channels, org_module.out_channels
            rank = min(rank, in_dim, out_dim)
            self.lora_down = nn.Conv2d(
                in_dim, rank, org_module.kernel_size, org_module.stride, org_module.padding,
                dilation=org_module.dilation, bias=False,
            )
            self.lora_up = nn.Conv2d(rank, out_dim, 1, 1, bias=False)
        elif isinstance(org_module, nn.Linear):
            in_dim, out_dim = org_module.in_features, org_module.out_features
            rank = min(rank, in_dim, out_dim)
            self.lora_down = nn.Linear(in_dim, rank, bias=False)
            self.lora_up = nn.Linear(rank, out_dim, bias=False)
        else:
            raise TypeError(f"LoRA applies to Linear and Conv2d, not {type(org_module).__name__}")
        self.rank = rank
        alpha = rank if alpha in (None, 0) else alpha
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        # An untrained adapter must change nothing: random down, zero up (kohya's init).
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.to(dtype)
        self.multiplier = 1.0
        self.enabled = True
        self.org_module = [org_module]  # a list keeps it out of this module's parameters
        self._org_forward = None

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def apply_to(self) -> None:
        org = self.org_module[0]
        self._org_forward = org.forward
        org.forward = self.forward

    def remove(self) -> None:
        if self._org_forward is not None:
            self.org_module[0].forward = self._org_forward
            self._org_forward = None

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        lora_dtype = self.lora_down.weight.dtype
        return self.lora_up(self.lora_down(x.to(lora_dtype))) * (self.multiplier * self.scale)

    def forward(self, x, *args, **kwargs):
        out = self._org_forward(x, *args, **kwargs)
        if not self.enabled or self.multiplier == 0:
            return out
        return out + self.delta(x).to(out.dtype)

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors under kohya's suffixes, in the layout A1111, ComfyUI and diffusers read."""
        return {
            "lora_down.weight": self.lora_down.weight,
            "lora_up.weight": self.lora_up.weight,
            "alpha": self.alpha,
        }

    def load_saved_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for suffix, target in (("lora_down.weight", self.lora_down.weight), ("lora_up.weight", self.lora_up.weight)):
                source = tensors[suffix]
                if source.shape != target.shape:
                    raise ValueError(f"{self.lora_name}.{suffix}: shape {tuple(source.shape)} != {tuple(target.shape)}")
                target.copy_(source.to(target.dtype))
            if "alpha" in tensors:
                self.alpha.copy_(tensors["alpha"].to(self.alpha.dtype))
