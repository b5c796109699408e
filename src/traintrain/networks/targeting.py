"""Which layers an adapter trains: A1111 block ids, network elements, and kohya module names."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from traintrain.choices import TEXT_ENCODER_BLOCK, UNET_BLOCK_IDS, NetworkElement
from traintrain.errors import UserError
from traintrain.networks.sgm_names import sgm_module_paths

# kohya's target containers: lierla trains Linear / 1x1 Conv layers inside these ...
TRANSFORMER_CLASSES = {"Transformer2DModel"}
TEXT_ENCODER_CLASSES = {"CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP"}
# ... and c3lier (LoCon) also the layers inside these (k x k convs with conv rank/alpha).
CONV_BLOCK_CLASSES = {"ResnetBlock2D", "Downsample2D", "Upsample2D"}


@dataclass(frozen=True)
class Target:
    lora_name: str  # kohya key stem, e.g. lora_unet_down_blocks_0_attentions_0_..._to_q
    module: nn.Module
    block_id: str  # BASE, IN00 ... OUT11
    is_kxk_conv: bool  # uses conv rank/alpha


def unet_block_ids(unet) -> tuple[str, ...]:
    """The A1111 block ids that exist in this UNet (SD1/SD2: 12 in, M00, 12 out; SDXL: 9+1+9)."""
    per_level = unet.config.layers_per_block
    if isinstance(per_level, (list, tuple)):
        per_level = per_level[0]
    count = len(unet.config.block_out_channels) * (per_level + 1)
    return tuple([f"IN{i:02d}" for i in range(count)] + ["M00"] + [f"OUT{i:02d}" for i in range(count)])


def block_id_of(module_path: str, layers_per_block: int) -> str | None:
    """A1111 block id (LDM input/middle/output block index) of a diffusers UNet module path."""
    per_level = layers_per_block + 1
    if module_path.startswith("conv_in"):
        return "IN00"
    if module_path.startswith("mid_block"):
        return "M00"
    match = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)", module_path)
    if match:
        level, kind, index = int(match[1]), match[2], int(match[3])
        if kind == "downsamplers":
            return f"IN{(level + 1) * per_level:02d}"
        return f"IN{1 + level * per_level + index:02d}"
    match = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)", module_path)
    if match:
        level, kind, index = int(match[1]), match[2], int(match[3])
        if kind == "upsamplers":
            return f"OUT{level * per_level + layers_per_block:02d}"
        return f"OUT{level * per_level + index:02d}"
    return None


def resolve_blocks(selected: list[str], unet) -> list[str]:
    """The block ids to train in this UNet; ids it does not have are rejected, naming the ones it has.

    Every SD1/SD2 UNet id selected (the default and the presets) means every block, so the same
    settings train all of an SDXL UNet, which has fewer blocks.
    """
    valid = (TEXT_ENCODER_BLOCK,) + unet_block_ids(unet)
    if set(UNET_BLOCK_IDS) <= set(selected):
        return [b for b in valid if b != TEXT_ENCODER_BLOCK or TEXT_ENCODER_BLOCK in selected]
    unknown = [b for b in selected if b not in valid]
    if unknown:
        raise UserError(
            f"network_blocks: {', '.join(unknown)} do not exist in this model; choose from {', '.join(valid)}"
        )
    return list(selected)


# the layers of each element, as parts of a module path
ELEMENT_PARTS = {
    NetworkElement.CROSS_ATTENTION: (".attn2.",),
    NetworkElement.CROSS_ATTENTION_KV: (".attn2.to_k.", ".attn2.to_v."),  # the projections of the prompt's tokens
    NetworkElement.CROSS_ATTENTION_V: (".attn2.to_v.",),
    NetworkElement.SELF_ATTENTION: (".attn1.",),
}


def _element_allows(path: str, element: NetworkElement) -> bool:
    parts = ELEMENT_PARTS.get(element)
    return parts is None or any(part in f".{path}." for part in parts)  # Full: every layer


def _trainable_children(container: nn.Module, include_kxk: bool):
    for name, child in container.named_modules():
        if isinstance(child, nn.Linear):
            yield name, child, False
        elif isinstance(child, nn.Conv2d):
            is_kxk = child.kernel_size != (1, 1)
            if not is_kxk or include_kxk:
                yield name, child, is_kxk


def unet_targets(
    unet, *, blocks: list[str], element: NetworkElement, with_conv_blocks: bool, sgm_names: bool = False
) -> list[Target]:
    """UNet layers to adapt, in module order, named as kohya does: diffusers paths (SD1/SD2) or SGM (SDXL)."""
    per_level = unet.config.layers_per_block
    if isinstance(per_level, (list, tuple)):
        per_level = per_level[0]
    containers = TRANSFORMER_CLASSES | (CONV_BLOCK_CLASSES if with_conv_blocks else set())
    found = {}  # module path -> (layer, block id, is k x k conv)
    for path, container in unet.named_modules():
        if type(container).__name__ not in containers:
            continue
        block = block_id_of(path, per_level)
        if block is None or block not in blocks:
            continue
        include_kxk = type(container).__name__ in CONV_BLOCK_CLASSES
        for child_name, child, is_kxk in _trainable_children(container, include_kxk):
            full = f"{path}.{child_name}" if child_name else path
            if full not in found and _element_allows(full, element):
                found[full] = (child, block, is_kxk)
    names = sgm_module_paths(list(found), unet.config) if sgm_names else {path: path for path in found}
    return [Target("lora_unet_" + names[path].replace(".", "_"), *found[path]) for path in found]


def text_encoder_targets(text_encoder, prefix: str, *, diffusers_names: bool = False) -> list[Target]:
    """Attention and MLP layers of a CLIP text encoder (T5 and Qwen3 have neither class: never adapted), named
    as kohya does, `{prefix}_text_model_encoder_...`, or with `diffusers_names` as diffusers' LoRA files of the
    transformer families do, `{prefix}.text_model.encoder...` (`text_encoder.`, SD3's CLIP-G `text_encoder_2.`)."""
    targets = []
    for path, container in text_encoder.named_modules():
        if type(container).__name__ not in TEXT_ENCODER_CLASSES:
            continue
        for child_name, child, _ in _trainable_children(container, include_kxk=False):
            full = f"{path}.{child_name}"
            if not full.startswith("text_model."):
                full = "text_model." + full  # transformers 5 drops the prefix kohya and diffusers names keep
            name = f"{prefix}.{full}" if diffusers_names else f"{prefix}_" + full.replace(".", "_")
            targets.append(Target(name, child, TEXT_ENCODER_BLOCK, False))
    return targets
