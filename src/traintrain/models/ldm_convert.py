"""diffusers/transformers state dicts -> the A1111/LDM single-file key layout.

diffusers ships only the LDM -> diffusers direction; this is the reverse, written as prefix maps
built from the model's config so it serves every block layout (SD1/SD2 four levels, SDXL three).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import torch

from traintrain.models.families import Family

V = TypeVar("V")  # whatever the state dict maps keys to: tensors, or module paths (sgm_names)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# Where each family keeps its text encoder(s) in a single file, in ModelComponents order.
TEXT_ENCODER_PREFIXES: dict[Family, tuple[str, ...]] = {
    Family.SD1: ("cond_stage_model.transformer.",),
    Family.SD2: ("cond_stage_model.model.",),
    Family.SDXL: ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
}

UNET_RESNET_RENAMES = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
)
VAE_ATTENTION_RENAMES = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)
OPEN_CLIP_LAYER_RENAMES = (
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("self_attn.out_proj.", "attn.out_proj."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
)


def components_to_ldm(components) -> dict[str, torch.Tensor]:
    """The whole model as one A1111/LDM state dict (what a single-file `.safetensors` holds)."""
    state = {}
    state.update(unet_to_ldm(components.unet.state_dict(), components.unet.config))
    state.update(vae_to_ldm(components.vae.state_dict(), components.vae.config))
    prefixes = TEXT_ENCODER_PREFIXES[components.family]
    for encoder, prefix in zip(components.text_encoders, prefixes, strict=False):
        if prefix.endswith(".transformer."):
            state.update(clip_to_ldm(encoder.state_dict(), prefix))
        else:
            # SD2's diffusers encoder lacks OpenCLIP's last layer (its output is never used); SDXL keeps all.
            state.update(
                open_clip_to_ldm(encoder.state_dict(), prefix, add_unused_last_layer=components.family is Family.SD2)
            )
    return state


def unet_to_ldm(state_dict: Mapping[str, V], config) -> dict[str, V]:
    """UNet2DConditionModel weights -> `model.diffusion_model.*` (input/middle/output blocks)."""
    prefix_map = _unet_prefix_map(config)
    out: dict[str, V] = {}
    for key, value in state_dict.items():
        diffusers_prefix, ldm_prefix = _match_prefix(key, prefix_map)
        rest = key[len(diffusers_prefix) :]
        if ".resnets." in diffusers_prefix:
            rest = _rename_start(rest, UNET_RESNET_RENAMES)
        out[UNET_PREFIX + ldm_prefix + rest] = value
    return out


def vae_to_ldm(state_dict, config) -> dict[str, torch.Tensor]:
    """AutoencoderKL weights -> `first_stage_model.*`; attention projections become 1x1 convs as in LDM."""
    prefix_map = _vae_prefix_map(config)
    out = {}
    for key, value in state_dict.items():
        diffusers_prefix, ldm_prefix = _match_prefix(key, prefix_map)
        rest = key[len(diffusers_prefix) :]
        if ".attentions." in diffusers_prefix:
            rest = _rename_start(rest, VAE_ATTENTION_RENAMES)
            if value.ndim == 2:
                value = value[:, :, None, None]
        elif ".resnets." in diffusers_prefix:
            rest = rest.replace("conv_shortcut.", "nin_shortcut.")
        out[VAE_PREFIX + ldm_prefix + rest] = value
    return out


def clip_to_ldm(state_dict, prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIPTextModel (transformers 5: no `text_model.` in its keys) -> `{prefix}text_model.*`."""
    return {prefix + "text_model." + _strip(key, "text_model."): value for key, value in state_dict.items()}


def open_clip_to_ldm(state_dict, prefix: str, add_unused_last_layer: bool) -> dict[str, torch.Tensor]:
    """HF CLIP text encoder -> OpenCLIP `{prefix}*` (fused q/k/v `in_proj`, `text_projection` as x @ P).

    SD2 checkpoints hold one more resblock than diffusers keeps, plus a projection, neither of which
    SD2 uses; `add_unused_last_layer` writes a copy of the last layer and an identity projection there
    so the file has the layout other tools expect.
    """
    weights = {_strip(key, "text_model."): value for key, value in state_dict.items()}
    hidden = weights["embeddings.token_embedding.weight"].shape[1]
    out = {
        prefix + "token_embedding.weight": weights["embeddings.token_embedding.weight"],
        prefix + "positional_embedding": weights["embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": weights["final_layer_norm.weight"],
        prefix + "ln_final.bias": weights["final_layer_norm.bias"],
    }
    if "text_projection.weight" in weights:
        out[prefix + "text_projection"] = weights["text_projection.weight"].T.contiguous()
    layers = _layer_count(weights)
    for index in range(layers):
        out.update(_open_clip_layer(weights, index, f"{prefix}transformer.resblocks.{index}."))
    if add_unused_last_layer:
        copy = _open_clip_layer(weights, layers - 1, f"{prefix}transformer.resblocks.{layers}.")
        out.update({key: value.clone() for key, value in copy.items()})  # files may not share storage
        out[prefix + "text_projection"] = torch.eye(hidden, dtype=weights["final_layer_norm.weight"].dtype)
    return out


def _open_clip_layer(weights, index: int, ldm_prefix: str) -> dict[str, torch.Tensor]:
    """One encoder layer in OpenCLIP naming; q, k, v are stacked into `in_proj` in that order."""
    layer = f"encoder.layers.{index}."
    out = {}
    for kind in ("weight", "bias"):
        qkv = [weights[f"{layer}self_attn.{p}_proj.{kind}"] for p in "qkv"]
        out[f"{ldm_prefix}attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
    for key, value in weights.items():
        fused = any(f"self_attn.{p}_proj." in key for p in "qkv")
        if key.startswith(layer) and not fused:
            out[ldm_prefix + _rename_start(key[len(layer) :], OPEN_CLIP_LAYER_RENAMES)] = value
    return out


def _layer_count(weights) -> int:
    return len({key.split(".")[2] for key in weights if key.startswith("encoder.layers.")})


def _unet_prefix_map(config) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs for this UNet's levels and layers per block."""
    per_block = config.layers_per_block
    levels = len(config.block_out_channels)
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for level in range(levels):
        for j in range(per_block):
            block = 1 + level * (per_block + 1) + j
            pairs.append((f"down_blocks.{level}.resnets.{j}.", f"input_blocks.{block}.0."))
            pairs.append((f"down_blocks.{level}.attentions.{j}.", f"input_blocks.{block}.1."))
        for j in range(per_block + 1):
            block = level * (per_block + 1) + j
            pairs.append((f"up_blocks.{level}.resnets.{j}.", f"output_blocks.{block}.0."))
            pairs.append((f"up_blocks.{level}.attentions.{j}.", f"output_blocks.{block}.1."))
        if level < levels - 1:
            pairs.append(
                (f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{(level + 1) * (per_block + 1)}.0.op.")
            )
            # LDM puts the upsampler after the block's attention when it has one.
            slot = 2 if "CrossAttn" in config.up_block_types[level] else 1
            pairs.append(
                (f"up_blocks.{level}.upsamplers.0.", f"output_blocks.{level * (per_block + 1) + per_block}.{slot}.")
            )
    return pairs


def _vae_prefix_map(config) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs; LDM numbers decoder levels from the bottom up."""
    per_block = config.layers_per_block
    levels = len(config.block_out_channels)
    pairs = [
        ("quant_conv.", "quant_conv."),
        ("post_quant_conv.", "post_quant_conv."),
    ]
    for side in ("encoder", "decoder"):
        pairs += [
            (f"{side}.conv_in.", f"{side}.conv_in."),
            (f"{side}.conv_out.", f"{side}.conv_out."),
            (f"{side}.conv_norm_out.", f"{side}.norm_out."),
            (f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1."),
            (f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1."),
            (f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2."),
        ]
    for level in range(levels):
        up = levels - 1 - level
        pairs += [
            (f"encoder.down_blocks.{level}.resnets.{j}.", f"encoder.down.{level}.block.{j}.") for j in range(per_block)
        ]
        pairs += [
            (f"decoder.up_blocks.{level}.resnets.{j}.", f"decoder.up.{up}.block.{j}.") for j in range(per_block + 1)
        ]
        if level < levels - 1:
            pairs.append((f"encoder.down_blocks.{level}.downsamplers.0.", f"encoder.down.{level}.downsample."))
            pairs.append((f"decoder.up_blocks.{level}.upsamplers.0.", f"decoder.up.{up}.upsample."))
    return pairs


def _match_prefix(key: str, prefix_map) -> tuple[str, str]:
    for diffusers_prefix, ldm_prefix in prefix_map:
        if key.startswith(diffusers_prefix):
            return diffusers_prefix, ldm_prefix
    raise ValueError(f"no LDM name for diffusers weight {key!r}")


def _rename_start(rest: str, renames) -> str:
    for old, new in renames:
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key
