"""An adapter network: one LoRA module per targeted layer of the UNet and text encoder(s)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from traintrain.choices import TEXT_ENCODER_BLOCK, NetworkElement, NetworkType
from traintrain.errors import UserError
from traintrain.models.families import Family
from traintrain.networks.base import AdapterModule
from traintrain.networks.kohya_format import load_lora
from traintrain.networks.lierla import LoRAModule
from traintrain.networks.loha import LoHaModule
from traintrain.networks.lokr import LoKrModule
from traintrain.networks.targeting import resolve_blocks, text_encoder_targets, unet_targets

# network_type -> module class; every type but lierla also adapts the ResNet and sampler convs.
MODULE_CLASSES: dict[NetworkType, type[LoRAModule] | type[LoHaModule] | type[LoKrModule]] = {
    NetworkType.LIERLA: LoRAModule, NetworkType.C3LIER: LoRAModule, NetworkType.LOHA: LoHaModule,
    NetworkType.LOKR: LoKrModule,
}
LYCORIS_ALGOS = {NetworkType.C3LIER: "locon", NetworkType.LOHA: "loha", NetworkType.LOKR: "lokr"}


@dataclass(frozen=True)
class NetworkSpec:
    """What to build: algorithm, sizes, and which layers."""

    network_type: NetworkType = NetworkType.LIERLA
    rank: int = 16
    alpha: float = 8.0
    conv_rank: int = 0  # 0 = rank
    conv_alpha: float = 0.0  # 0 = alpha
    blocks: list = field(default_factory=list)
    element: NetworkElement = NetworkElement.FULL

    def __post_init__(self):
        """Names given as text ("loha", "CrossAttention") become the enums the code compares."""
        object.__setattr__(self, "network_type", NetworkType.parse(self.network_type, "network_type"))
        object.__setattr__(self, "element", NetworkElement.parse(self.element, "network_element"))

    @classmethod
    def from_config(cls, config) -> NetworkSpec:
        return cls(
            network_type=config.network_type,
            rank=config.network_rank,
            alpha=config.network_alpha,
            conv_rank=config.network_conv_rank,
            conv_alpha=config.network_conv_alpha,
            blocks=list(config.network_blocks),
            element=config.network_element,
        )

    @property
    def trains_text_encoder(self) -> bool:
        return TEXT_ENCODER_BLOCK in self.blocks and self.element is NetworkElement.FULL

    @property
    def with_conv_blocks(self) -> bool:
        return self.network_type is not NetworkType.LIERLA

    @property
    def network_args(self) -> dict[str, str]:
        """kohya's ss_network_args: only what differs from a plain LoRA (LyCORIS's algo and conv sizes)."""
        if not self.with_conv_blocks:
            return {}
        return {
            "conv_dim": str(self.conv_rank or self.rank),
            "conv_alpha": str(self.conv_alpha or self.alpha),
            "algo": LYCORIS_ALGOS[self.network_type],
        }


class AdapterNetwork(nn.Module):
    """The trainable adapter for one model; `apply()` hooks it in, `remove()` takes it out."""

    def __init__(self, components, spec: NetworkSpec, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.spec = spec
        unet = unet_targets(
            components.unet, blocks=resolve_blocks(spec.blocks, components.unet), element=spec.element,
            with_conv_blocks=spec.with_conv_blocks, sgm_names=components.family == Family.SDXL,
        )
        text = []
        if spec.trains_text_encoder:
            for prefix, encoder in zip(components.spec.text_encoder_prefixes, components.text_encoders, strict=False):
                text += text_encoder_targets(encoder, prefix)
        if not unet and not text:
            raise UserError(
                "network_blocks / network_element select no layer to train; select more blocks or use element Full"
            )
        self.unet_modules = nn.ModuleList(self._module_for(t, dtype) for t in unet)
        self.text_encoder_modules = nn.ModuleList(self._module_for(t, dtype) for t in text)
        self._applied = False

    def _module_for(self, target, dtype) -> AdapterModule:
        if target.is_kxk_conv:
            rank, alpha = self.spec.conv_rank or self.spec.rank, self.spec.conv_alpha or self.spec.alpha
        else:
            rank, alpha = self.spec.rank, self.spec.alpha
        return MODULE_CLASSES[self.spec.network_type](target.lora_name, target.module, rank, alpha, dtype)

    @property
    def all_modules(self) -> list[AdapterModule]:
        return cast(list[AdapterModule], list(self.unet_modules) + list(self.text_encoder_modules))

    def apply(self) -> AdapterNetwork:  # type: ignore[override]  # hooks the modules in; not nn.Module.apply(fn)
        if not self._applied:
            for module in self.all_modules:
                module.apply_to()
            self._applied = True
        return self

    def remove(self) -> None:
        """Unhook (adapters stacked later on the same layers must be removed first)."""
        if self._applied:
            for module in reversed(self.all_modules):
                module.remove()
            self._applied = False

    def set_multiplier(self, multiplier: float) -> None:
        for module in self.all_modules:
            module.multiplier = multiplier

    def set_enabled(self, enabled: bool) -> None:
        for module in self.all_modules:
            module.enabled = enabled

    def unet_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.unet_modules for p in m.parameters()]

    def text_encoder_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.text_encoder_modules for p in m.parameters()]

    def tensors_for_save(self, dtype: torch.dtype, strength: float = 1.0) -> dict[str, torch.Tensor]:
        """kohya-named tensors; `strength` s multiplies each update by s (sqrt(s) on two factors)."""
        factor = math.sqrt(strength)
        out = {}
        for module in self.all_modules:
            for suffix, tensor in module.saved_tensors().items():
                value = tensor.detach().float()
                if suffix in module.strength_tensors:
                    value = value * factor
                out[f"{module.lora_name}.{suffix}"] = value.to(dtype).contiguous().cpu()
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor], source: str = "LoRA file") -> None:
        """Fill every module from saved tensors; shapes and names must match exactly."""
        names = {m.lora_name for m in self.all_modules}
        stems = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in tensors}
        missing = sorted(names - stems)
        extra = sorted(stems - names)
        if missing or extra:
            detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
            raise UserError(
                f"{source}: does not match this network ({detail}); "
                "use the same model, network type, blocks and element"
            )
        for module in self.all_modules:
            prefix = module.lora_name + "."
            own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                module.load_saved_tensors(own)
            except ValueError as exc:
                raise UserError(f"{source}: {exc}; use the same rank, network type and model as the file") from None

    def resume_from(self, path) -> None:
        """Continue training from a saved file (network_resume): same model, type, rank, blocks."""
        tensors, _ = load_lora(path)
        self.load_tensors(tensors, source=str(path))
