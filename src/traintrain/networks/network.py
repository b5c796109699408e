"""An adapter network: one LoRA module per targeted layer of the UNet and text encoder(s)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from traintrain.choices import TEXT_ENCODER_BLOCK, NetworkElement, NetworkType
from traintrain.errors import UserError
from traintrain.models.families import SD3_KOHYA_VERSIONS, SPECS, TRANSFORMER_FAMILIES, Family
from traintrain.networks.base import AdapterModule
from traintrain.networks.flux_targeting import SAVED_SUFFIXES as FLUX_SAVED_SUFFIXES
from traintrain.networks.flux_targeting import TEXT_ENCODER_PREFIXES as FLUX_TEXT_ENCODER_PREFIXES
from traintrain.networks.flux_targeting import flux_targets, resolve_flux_blocks
from traintrain.networks.kohya_format import load_lora
from traintrain.networks.lierla import LoRAModule
from traintrain.networks.loha import LoHaModule
from traintrain.networks.lokr import LoKrModule
from traintrain.networks.sd3_targeting import TEXT_ENCODER_PREFIXES as SD3_TEXT_ENCODER_PREFIXES
from traintrain.networks.sd3_targeting import resolve_sd3_blocks, sd3_targets
from traintrain.networks.targeting import resolve_blocks, text_encoder_targets, unet_targets
from traintrain.networks.zimage_targeting import resolve_zimage_blocks, zimage_targets

# network_type -> module class; every type but lierla also adapts the ResNet and sampler convs.
MODULE_CLASSES: dict[NetworkType, type[LoRAModule] | type[LoHaModule] | type[LoKrModule]] = {
    NetworkType.LIERLA: LoRAModule, NetworkType.C3LIER: LoRAModule, NetworkType.LOHA: LoHaModule,
    NetworkType.LOKR: LoKrModule,
}
TEXT_ENCODER_STEMS = ("lora_te", "text_encoder")  # text-encoder module names: kohya's, diffusers' layout
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
        self.family = components.family
        # file suffixes that differ from the modules' kohya ones (Flux / SD3 files use diffusers' lora_A / lora_B)
        self.saved_suffixes: dict[str, str] = {}
        # SD3 LoRA files hold no alpha: StableDiffusion3Pipeline.load_lora_weights refuses any key without
        # "lora" in it, so alpha / rank is multiplied into the two factors (sqrt each), which every reader
        # (diffusers, ComfyUI, PEFT) then applies with the scale 1 a missing alpha means.
        self.alpha_in_factors = False
        text = []
        # The CLIP text encoders' names: kohya's (lora_te1_...) on the SD families, diffusers' (text_encoder.,
        # text_encoder_2.) beside the transformer's diffusers names on Flux / SD3; Z-Image's Qwen3 is not trained.
        text_prefixes = components.spec.text_encoder_prefixes
        if components.family is Family.FLUX:
            unet = flux_targets(components.transformer, blocks=resolve_flux_blocks(spec.blocks, components.transformer),
                                element=spec.element)
            self.saved_suffixes = dict(FLUX_SAVED_SUFFIXES)
            text_prefixes = FLUX_TEXT_ENCODER_PREFIXES
        elif components.family is Family.SD3:
            unet = sd3_targets(components.transformer, blocks=resolve_sd3_blocks(spec.blocks, components.transformer),
                               element=spec.element)
            self.saved_suffixes = dict(FLUX_SAVED_SUFFIXES)
            self.alpha_in_factors = True
            text_prefixes = SD3_TEXT_ENCODER_PREFIXES
        elif components.family is Family.ZIMAGE:  # no .alpha keys either (networks/zimage_targeting.py)
            unet = zimage_targets(components.transformer, element=spec.element,
                                  blocks=resolve_zimage_blocks(spec.blocks, components.transformer))
            self.saved_suffixes = dict(FLUX_SAVED_SUFFIXES)
            self.alpha_in_factors = True
            text_prefixes = ()
        else:
            unet = unet_targets(
                components.unet, blocks=resolve_blocks(spec.blocks, components.unet), element=spec.element,
                with_conv_blocks=spec.with_conv_blocks, sgm_names=components.family == Family.SDXL,
            )
        if spec.trains_text_encoder:
            diffusers_names = components.family in TRANSFORMER_FAMILIES
            for prefix, encoder in zip(text_prefixes, components.text_encoders, strict=False):  # T5 is never trained
                text += text_encoder_targets(encoder, prefix, diffusers_names=diffusers_names)
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
            saved, scale = module.saved_tensors(), factor
            if self.alpha_in_factors and isinstance(module, LoRAModule):
                saved, scale = {k: v for k, v in saved.items() if k != "alpha"}, factor * math.sqrt(module.scale)
            for suffix, tensor in saved.items():
                value = tensor.detach().float()
                if suffix in module.strength_tensors:
                    value = value * scale
                name = f"{module.lora_name}.{self.saved_suffixes.get(suffix, suffix)}"
                out[name] = value.to(dtype).contiguous().cpu()
        return out

    @property
    def trains_text_encoder(self) -> bool:
        return len(self.text_encoder_modules) > 0

    def load_tensors(self, tensors: dict[str, torch.Tensor], source: str = "LoRA file") -> None:
        """Fill every module from saved tensors; shapes and names must match exactly."""
        renamed = {saved: own for own, saved in self.saved_suffixes.items()}
        tensors = {_rename_suffix(key, renamed): value for key, value in tensors.items()}
        names = {m.lora_name for m in self.all_modules}
        stems = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in tensors}
        missing = sorted(names - stems)
        extra = sorted(stems - names)
        if missing or extra:
            detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
            raise UserError(f"{source}: does not match this network ({detail})", self._mismatch_fix(missing, extra),
                            field="network_resume")
        for module in self.all_modules:
            prefix = module.lora_name + "."
            own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                module.load_saved_tensors(own)
            except ValueError as exc:
                raise UserError(f"{source}: {exc}; use the same rank, network type and model as the file") from None

    def _mismatch_fix(self, missing: list[str], extra: list[str]) -> str:
        """What to change when a file's modules differ from this network's: block BASE when only the
        text-encoder part differs (a file trained without it, or with it), else the usual suspects."""
        text_encoder = {m.lora_name for m in self.text_encoder_modules}
        if missing and set(missing) <= text_encoder:
            return "the file has no text-encoder part: leave BASE out of network_blocks"
        if extra and not missing and not text_encoder and all(name.startswith(TEXT_ENCODER_STEMS) for name in extra):
            return "the file also trains the text encoder: add BASE to network_blocks"
        return "use the same model, network type, blocks and element"

    def resume_from(self, path) -> None:
        """Continue training from a saved file (network_resume): same model, type, rank, blocks."""
        tensors, metadata = load_lora(path)
        trained_for = lora_family(tensors, metadata)
        transformers = (trained_for in TRANSFORMER_FAMILIES, self.family in TRANSFORMER_FAMILIES)
        if trained_for is not None and trained_for is not self.family and any(transformers):
            raise UserError(
                f"{path}: a LoRA for {SPECS[trained_for].base_model_version} models; this model is "
                f"{self.family.value} ({SPECS[self.family].base_model_version})",
                "give a LoRA trained on this model family, or leave network_resume empty", field="network_resume",
            )
        self.load_tensors(tensors, source=str(path))


def _rename_suffix(key: str, renamed: dict[str, str]) -> str:
    for saved, own in renamed.items():
        if key.endswith("." + saved):
            return key[: -len(saved)] + own
    return key


def lora_family(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Family | None:
    """The family a LoRA file was trained for: kohya's ss_base_model_version (sd-scripts writes SD3's variant,
    "medium" / "5-large" ...), else the key names: SD3's `joint_blocks` (kohya's `lora_unet_joint_blocks_`),
    Flux's single blocks (diffusers' `transformer.single_transformer_blocks.`, kohya's `lora_unet_double_blocks_`
    / `_single_blocks_`), Z-Image's refiners and layers (`transformer.noise_refiner.`, `.layers.N.attention.`,
    kohya's `lora_unet_layers_`); None if unknown (diffusers' `transformer.transformer_blocks.` alone are either).
    musubi-tuner's Z-Image files name it in modelspec.architecture ("Z-Image/lora")."""
    version = metadata.get("ss_base_model_version", "")
    if version in SD3_KOHYA_VERSIONS or version.startswith("sd3"):
        return Family.SD3
    if version == SPECS[Family.ZIMAGE].base_model_version or metadata.get("modelspec.architecture", "").startswith(
            "Z-Image"):
        return Family.ZIMAGE
    for spec in SPECS.values():
        if version == spec.base_model_version or (version.startswith("flux") and spec.family is Family.FLUX):
            return spec.family
    if any(key.startswith("lora_unet_joint_blocks_") or ".joint_blocks." in key for key in tensors):
        return Family.SD3
    zimage_keys = ("noise_refiner.", "context_refiner.", "lora_unet_layers_", "lora_unet_noise_refiner_")
    if any(marker in key for key in tensors for marker in zimage_keys) or any(
            re.search(r"(^|\.)layers\.\d+\.(attention|feed_forward)\.", key) for key in tensors):
        return Family.ZIMAGE
    flux_keys = ("transformer.single_transformer_blocks.", "lora_unet_double_blocks_", "lora_unet_single_blocks_")
    if any(key.startswith(flux_keys) for key in tensors):
        return Family.FLUX
    return None
