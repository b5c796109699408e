"""SD1, SD2 and SDXL: A1111 single files (`.safetensors`, `.ckpt`) and diffusers folders.

A single file carries no config, so the architecture's dimensions are read from tensor shapes and
filled into the family's bundled config template (ComfyUI's approach): real checkpoints and the tiny
test models load through the same path. Flux files reuse the CLIP-L reading here. Every failure is a
one-line UserError.
"""

from __future__ import annotations

import re
from pathlib import Path

from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from traintrain.errors import UserError
from traintrain.models.assembly import (
    TEXT_ENCODER_FOLDERS,
    assemble,
    build_text_encoder,
    config_template,
    count_children,
    load_pretrained,
    text_encoder_heads,
    weights_under,
)
from traintrain.models.checkpoint_kinds import checkpoint_family, choose_unet_weights, no_ema_weights, tensor_shapes
from traintrain.models.checkpoint_reading import read_checkpoint
from traintrain.models.components import ModelComponents
from traintrain.models.families import Family
from traintrain.models.ldm_convert import TEXT_ENCODER_PREFIXES, UNET_PREFIX, VAE_PREFIX
from traintrain.models.prediction import declared_prediction
from traintrain.models.tokenizers import find_tokenizers
from traintrain.training.events import Reporter


def unet_attention_heads(family: Family, channels) -> int | list[int]:
    """Head counts a file cannot store: SD1 uses 8 heads everywhere, SD2/SDXL heads of 64 channels."""
    if family is Family.SD1:
        return config_template(family, "unet")["attention_head_dim"]
    return [max(1, c // 64) for c in channels]


def load_sd_single_file(path: Path, tokenizer_dir, report: Reporter, use_ema: bool) -> ModelComponents:
    """An A1111 checkpoint: configs read from its shapes, weights converted by diffusers' converters."""
    state = read_checkpoint(path)
    family = checkpoint_family(path, tensor_shapes(state))
    state = choose_unet_weights(path, state, use_ema, report)
    tokenizers = find_tokenizers(family, path, tokenizer_dir, report)
    try:
        encoder_configs = clip_configs_from_ldm(family, state, tokenizers)
        unet_config = unet_config_from_ldm(family, state, encoder_configs)
        vae_config = vae_config_from_ldm(family, state)
    except (KeyError, IndexError, ValueError, StopIteration) as error:
        raise UserError(
            f"{path}: {family.value} checkpoint with missing or odd weights ({error}); "
            "the file is incomplete or not supported",
            field="model",
        ) from error
    unet = assemble(
        UNet2DConditionModel.from_config,
        unet_config,
        lambda m: convert_ldm_unet_checkpoint(state, unet_config),
        path,
        "UNet",
    )
    vae = assemble(
        AutoencoderKL.from_config, vae_config, lambda m: convert_ldm_vae_checkpoint(state, vae_config), path, "VAE"
    )
    text_encoders = [
        assemble(
            build_text_encoder,
            config,
            lambda m, i=index: convert_clip_from_ldm(family, i, state, m),
            path,
            "text encoder",
        )
        for index, config in enumerate(encoder_configs)
    ]
    return ModelComponents(
        family, unet, vae, text_encoders, tokenizers, prediction=declared_prediction(path, state.keys()),
        source=str(path),
    )


def unet_config_from_ldm(family: Family, state, encoder_configs) -> dict:
    """UNet config: the family template with channels, depth and attention layout read from the weights."""
    unet = weights_under(state, UNET_PREFIX)
    levels = 1 + sum(1 for key in unet if re.fullmatch(r"input_blocks\.\d+\.0\.op\.weight", key))
    input_blocks = 1 + max(int(key.split(".")[1]) for key in unet if key.startswith("input_blocks."))
    per_block = (input_blocks - levels) // levels
    first_blocks = [1 + level * (per_block + 1) for level in range(levels)]
    channels = [unet[f"input_blocks.{block}.0.out_layers.3.weight"].shape[0] for block in first_blocks]
    depths = [count_children(unet, f"input_blocks.{block}.1.transformer_blocks.") for block in first_blocks]
    mid_depth = count_children(unet, "middle_block.1.transformer_blocks.")
    attention = next(key for key in unet if key.endswith(".proj_in.weight"))
    cross_key = next(key for key in unet if key.endswith("attn2.to_k.weight"))
    config = config_template(family, "unet") | {
        "in_channels": unet["input_blocks.0.0.weight"].shape[1],
        "out_channels": unet["out.2.weight"].shape[0],
        "block_out_channels": channels,
        "layers_per_block": per_block,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        "transformer_layers_per_block": [d or 1 for d in depths[:-1]] + [depths[-1] or mid_depth],
        "cross_attention_dim": unet[cross_key].shape[1],
        "use_linear_projection": unet[attention].ndim == 2,
        "attention_head_dim": unet_attention_heads(family, channels),
    }
    if family is Family.SDXL:
        extra_inputs = unet["label_emb.0.0.weight"].shape[1]
        pooled = encoder_configs[-1]["projection_dim"]
        config |= {
            "projection_class_embeddings_input_dim": extra_inputs,
            "addition_time_embed_dim": (extra_inputs - pooled) // 6,
        }
    return config


def vae_config_from_ldm(family: Family, state) -> dict:
    """VAE config: the family template with levels, channels and latent size read from the weights."""
    vae = weights_under(state, VAE_PREFIX)
    levels = len({key.split(".")[2] for key in vae if key.startswith("encoder.down.")})
    return config_template(family, "vae") | {
        "in_channels": vae["encoder.conv_in.weight"].shape[1],
        "out_channels": vae["decoder.conv_out.weight"].shape[0],
        "latent_channels": vae["decoder.conv_in.weight"].shape[1],
        "block_out_channels": [vae[f"encoder.down.{level}.block.0.conv2.weight"].shape[0] for level in range(levels)],
        "layers_per_block": count_children(vae, "encoder.down.0.block."),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
    }


def clip_configs_from_ldm(family: Family, state, tokenizers) -> list[dict]:
    """Text encoder config(s): templates with width, depth and vocabulary read from the weights."""
    configs = []
    folders = TEXT_ENCODER_FOLDERS[: len(TEXT_ENCODER_PREFIXES[family])]
    for prefix, folder, tokenizer in zip(TEXT_ENCODER_PREFIXES[family], folders, tokenizers, strict=False):
        weights = weights_under(state, prefix)
        if prefix.endswith(".transformer."):
            embedding = weights["text_model.embeddings.token_embedding.weight"]
            positions = weights["text_model.embeddings.position_embedding.weight"].shape[0]
            layers = count_children(weights, "text_model.encoder.layers.")
            intermediate = weights["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
        else:
            embedding = weights["token_embedding.weight"]
            positions = weights["positional_embedding"].shape[0]
            # diffusers drops SD2's last OpenCLIP layer: SD2 conditions on the penultimate one.
            layers = count_children(weights, "transformer.resblocks.") - (family is Family.SD2)
            intermediate = weights["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        config = config_template(family, folder) | {
            "vocab_size": embedding.shape[0],
            "hidden_size": embedding.shape[1],
            "num_attention_heads": text_encoder_heads(embedding.shape[1]),
            "num_hidden_layers": layers,
            "intermediate_size": intermediate,
            "max_position_embeddings": positions,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if "text_projection" in weights and family is Family.SDXL:
            config["projection_dim"] = weights["text_projection"].shape[1]
        configs.append(config)
    return configs


def convert_clip_from_ldm(family: Family, index: int, state, model) -> dict:
    """LDM text-encoder weights in the model's own key names, via diffusers' converters."""
    prefix = TEXT_ENCODER_PREFIXES[family][index]
    if prefix.endswith(".transformer."):
        converted = convert_ldm_clip_checkpoint(weights_under(state, prefix, keep_prefix=True))
    else:
        converted = convert_open_clip_checkpoint(model, _open_clip_weights(family, state, prefix), prefix=prefix)
    if not hasattr(model, "text_model"):  # transformers 5 flattened CLIPTextModel
        converted = {key.removeprefix("text_model."): value for key, value in converted.items()}
    weights = {key: value for key, value in converted.items() if not key.endswith("position_ids")}
    # transformers < 4.31 (A1111 pins 4.30) keeps position_ids as a saved buffer: adopt the model's own.
    weights.update({key: value for key, value in model.state_dict().items() if key.endswith("position_ids")})
    return weights


def _open_clip_weights(family: Family, state, prefix: str) -> dict:
    """OpenCLIP weights to convert; for SD2 without the unused last layer and projection."""
    weights = weights_under(state, prefix, keep_prefix=True)
    if family is not Family.SD2:
        return weights
    last = count_children(weights, prefix + "transformer.resblocks.") - 1
    unused = (f"{prefix}transformer.resblocks.{last}.", f"{prefix}text_projection")
    return {key: value for key, value in weights.items() if not key.startswith(unused)}


def load_sd_folder(path: Path, family: Family, tokenizer_dir, report: Reporter, use_ema: bool) -> ModelComponents:
    """A checked diffusers folder of an SD family (models/loading.py found which)."""
    if use_ema:  # diffusers folders hold one UNet
        raise no_ema_weights(path)
    unet = load_pretrained(UNet2DConditionModel, path, "unet")
    vae = load_pretrained(AutoencoderKL, path, "vae")
    classes = (CLIPTextModel, CLIPTextModelWithProjection) if family is Family.SDXL else (CLIPTextModel,)
    text_encoders = [
        load_pretrained(cls, path, folder) for cls, folder in zip(classes, TEXT_ENCODER_FOLDERS, strict=False)
    ]
    tokenizers = find_tokenizers(family, path, tokenizer_dir, report)
    return ModelComponents(
        family, unet, vae, text_encoders, tokenizers, prediction=declared_prediction(path), source=str(path)
    )
