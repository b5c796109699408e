"""What every adapter algorithm shares: hooking into one Linear/Conv2d and the saved-tensor contract.

As in LyCORIS, each algorithm is a small subclass that only says how its update is computed and
which tensors it saves; hooking, multiplier, enabling and loading live here once. A module hooks in
by replacing the layer's forward, so several adapters can stack on the same layer (Difference mode
keeps the copier applied under the difference LoRA) and each can be removed again, newest first.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class AdapterModule(nn.Module, abc.ABC):
    """Base of LoRA, LoHa and LoKr modules: `forward = org(x) + delta(x)`.

    Abstract: each algorithm defines `delta` and `saved_tensors`; the base cannot be instantiated.
    """

    # Tensors that each get sqrt(network_strength) when saving, so the whole update scales by it.
    strength_tensors: tuple[str, ...] = ()
    alpha: torch.Tensor  # a buffer each algorithm registers (the saved `alpha`)
    multiplier_tensor: torch.Tensor  # a buffer: the multiplier under torch.compile

    def __init__(self, lora_name: str, org_module: nn.Linear | nn.Conv2d):
        super().__init__()
        if not isinstance(org_module, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"adapters apply to Linear and Conv2d, not {type(org_module).__name__}")
        self.lora_name = lora_name
        # The multiplier as a tensor too: under torch.compile (training/compile.py) a Python number would
        # be baked into the graph and each new value would compile again. Not saved; in the adapter's dtype.
        self.register_buffer("multiplier_tensor", torch.ones(()), persistent=False)
        self.multiplier = 1.0
        self.enabled = True
        self.org_module = [org_module]  # a list keeps it out of this module's parameters
        self._org_forward: Callable[..., torch.Tensor] | None = None

    @property
    def multiplier(self) -> float:
        return self._multiplier

    @multiplier.setter
    def multiplier(self, value: float) -> None:
        self._multiplier = float(value)
        self.multiplier_tensor.fill_(self._multiplier)

    def applied_multiplier(self) -> float | torch.Tensor:
        """The multiplier `delta` scales by: the number eagerly, the tensor while torch.compile traces."""
        return self.multiplier_tensor if torch.compiler.is_compiling() else self._multiplier

    @property
    def is_conv(self) -> bool:
        return isinstance(self.org_module[0], nn.Conv2d)

    def apply_to(self) -> None:
        org = self.org_module[0]
        self._org_forward = org.forward
        # The hook: the layer's forward is replaced on purpose (an instance attribute shadowing the method).
        org.forward = self.forward  # type: ignore[method-assign, assignment]

    def remove(self) -> None:
        if self._org_forward is not None:
            self.org_module[0].forward = self._org_forward  # type: ignore[method-assign]  # unhook: see apply_to
            self._org_forward = None

    def forward(self, x, *args, **kwargs):
        out = self._org_forward(x, *args, **kwargs)
        if not self.enabled or (not torch.compiler.is_compiling() and self._multiplier == 0):
            return out
        return out + self.delta(x).to(out.dtype)

    @abc.abstractmethod
    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution to the layer's output for input x."""

    @abc.abstractmethod
    def saved_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors under their file suffixes (`alpha` included)."""

    def load_saved_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy a file's tensors in; every suffix but alpha must be there with the same shape."""
        with torch.no_grad():
            for suffix, target in self.saved_tensors().items():
                if suffix not in tensors:
                    if suffix == "alpha":
                        continue
                    raise ValueError(f"{self.lora_name}: no '{suffix}' tensor (another network type?)")
                source = tensors[suffix]
                if source.shape != target.shape:
                    raise ValueError(f"{self.lora_name}.{suffix}: shape {tuple(source.shape)} != {tuple(target.shape)}")
                target.copy_(source.to(target.dtype))


class WeightDeltaModule(AdapterModule):
    """An adapter that builds a full weight update dW (LoHa, LoKr) and applies it as the layer would."""

    @abc.abstractmethod
    def delta_weight(self) -> torch.Tensor:
        """dW * alpha / rank in the layer's weight shape."""

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.delta_weight() * self.applied_multiplier()
        x = x.to(weight.dtype)
        org = self.org_module[0]
        if isinstance(org, nn.Conv2d):  # self.is_conv, spelled so the type checker narrows `org`
            return F.conv2d(x, weight, None, org.stride, org.padding, org.dilation, org.groups)
        return F.linear(x, weight)


def flat_weight_shape(org_module: nn.Linear | nn.Conv2d) -> tuple[int, int]:
    """(out, in * k * k): the matrix the factorised update is built as, before reshaping."""
    weight = org_module.weight
    return weight.shape[0], weight[0].numel()
