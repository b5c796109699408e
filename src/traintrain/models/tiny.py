"""Tiny random Stable Diffusion models: the real block layout of each family at toy widths.

Tests and the demo train on these in milliseconds per step. They go through the same config
templates as real checkpoints, so a tiny file exercises the real loading path. Every GroupNorm'd
width is a multiple of 32: a single file cannot record another group count.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import save_file

from traintrain.errors import UserError
from traintrain.fileio import atomic_folder, atomic_path
from traintrain.models.assembly import (
    CONFIG_ROOT,
    TEXT_ENCODER_FOLDERS,
    build_text_encoder,
    config_template,
    text_encoder_heads,
)
from traintrain.models.components import ModelComponents
from traintrain.models.families import Family
from traintrain.models.ldm_convert import components_to_ldm
from traintrain.models.sd_loading import unet_attention_heads
from traintrain.models.tokenizers import TOKENIZER_FOLDERS, build_tiny_tokenizer, save_tokenizer

FORMATS = ("single-file", "diffusers")

# Per family: UNet channels per level, transformer depth per level, text encoder widths.
TINY_UNET_CHANNELS = {Family.SD1: [32, 32, 64, 64], Family.SD2: [32, 32, 64, 64], Family.SDXL: [32, 64, 64]}
TINY_TRANSFORMER_DEPTHS = {Family.SDXL: [1, 1, 2]}  # SDXL's (1, 2, 10), shrunk; SD1/SD2 use 1
TINY_TEXT_WIDTHS = {Family.SD1: [64], Family.SD2: [64], Family.SDXL: [64, 96]}
TINY_TIME_EMBED_DIM = 16  # SDXL's addition_time_embed_dim (256 in the real model)


def build_tiny_components(family: Family, seed: int = 0) -> ModelComponents:
    """A random model of `family` (SD1 about 1.5M parameters), the same for the same seed."""
    family = Family(family)
    if family is Family.FLUX:
        from traintrain.models.flux_tiny import build_tiny_flux

        return build_tiny_flux(seed)
    if family is Family.SD3:
        from traintrain.models.sd3_tiny import build_tiny_sd3

        return build_tiny_sd3(seed)
    if family is Family.ZIMAGE:
        from traintrain.models.zimage_tiny import build_tiny_zimage

        return build_tiny_zimage(seed)
    tokenizers = [build_tiny_tokenizer() for _ in TINY_TEXT_WIDTHS[family]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(tiny_unet_config(family))
        vae = AutoencoderKL.from_config(tiny_vae_config(family))
        _shape_latent_space(vae, family)
        text_encoders = [tiny_text_encoder(family, index, tokenizer) for index, tokenizer in enumerate(tokenizers)]
    for model in (unet, vae, *text_encoders):
        model.eval()
    return ModelComponents(family, unet, vae, text_encoders, tokenizers, source=f"tiny-{family.value}-seed{seed}")


def _shape_latent_space(vae: AutoencoderKL, family: Family) -> None:
    """Give the random VAE the latent statistics of a trained one.

    A trained SD VAE has an almost deterministic posterior (tiny std) and latents whose std is
    about 1 after the family's scale factor. A random one has posterior std ~1 and mean std ~0.3,
    so its samples are mostly noise and nothing trained on them can be seen in pictures. Scaling
    quant_conv's mean rows up (and post_quant_conv's input down to match) and pinning the log
    variance low fixes both without changing the architecture or the file format.
    """
    from traintrain.models.families import SPECS

    gain = 1.0 / (0.3 * SPECS[family].latent_scale)
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[:channels] *= gain
        vae.quant_conv.bias[:channels] *= gain
        vae.quant_conv.weight[channels:] = 0.0
        vae.quant_conv.bias[channels:] = -10.0  # posterior std exp(-5), as in a trained VAE
        vae.post_quant_conv.weight /= gain


def tiny_unet_config(family: Family) -> dict:
    channels = TINY_UNET_CHANNELS[family]
    config = config_template(family, "unet") | {
        "block_out_channels": channels,
        "cross_attention_dim": sum(TINY_TEXT_WIDTHS[family]),
        "attention_head_dim": unet_attention_heads(family, channels),
        "sample_size": 16,
    }
    if family is Family.SDXL:
        pooled = TINY_TEXT_WIDTHS[family][-1]
        config |= {
            "transformer_layers_per_block": TINY_TRANSFORMER_DEPTHS[family],
            "addition_time_embed_dim": TINY_TIME_EMBED_DIM,
            "projection_class_embeddings_input_dim": pooled + 6 * TINY_TIME_EMBED_DIM,
        }
    return config


def tiny_vae_config(family: Family) -> dict:
    """Four levels (downscale factor 8) of 32 channels, one resnet each."""
    return config_template(family, "vae") | {"block_out_channels": [32] * 4, "layers_per_block": 1, "sample_size": 128}


def tiny_text_encoder(family: Family, index: int, tokenizer):
    width = TINY_TEXT_WIDTHS[family][index]
    config = config_template(family, TEXT_ENCODER_FOLDERS[index]) | {
        "hidden_size": width,
        "num_hidden_layers": 2,
        "num_attention_heads": text_encoder_heads(width),
        "intermediate_size": 2 * width,
        "projection_dim": width,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return build_text_encoder(config)


def write_tiny_model(
    family: Family | str, fmt: str, out, seed: int = 0, components: ModelComponents | None = None
) -> Path:
    """Write a tiny model as an A1111 single file (`fmt="single-file"`) or a diffusers folder.

    A single file `X.safetensors` gets its tokenizer(s) in `X.tokenizer/` beside it, where
    loading looks for them. `components` writes a tiny model built (and perhaps tuned) elsewhere.
    """
    family, out = Family(family), Path(out)
    if fmt not in FORMATS:
        raise UserError(f"unknown model format {fmt!r}; use one of {', '.join(FORMATS)}")
    tokenizer_folder = out.with_name(out.stem + ".tokenizer") if fmt == "single-file" else out
    for target in {out, tokenizer_folder}:
        if target.exists():
            raise UserError(f"{target}: already exists; choose another output path or delete it first")
    components = components or build_tiny_components(family, seed)
    if family is Family.FLUX:
        _write_tiny_flux(components, fmt, out)
    elif family is Family.SD3:
        from traintrain.models.sd3_tiny import write_sd3_diffusers, write_sd3_single_file

        if fmt == "diffusers":
            write_sd3_diffusers(components, out)
        else:  # all-in-one, as sd3_medium_incl_clips_t5xxlfp16.safetensors
            write_sd3_single_file(components, out)
    elif family is Family.ZIMAGE:
        from traintrain.models.zimage_tiny import write_zimage_diffusers, write_zimage_single_file

        (write_zimage_diffusers if fmt == "diffusers" else write_zimage_single_file)(components, out)
    elif fmt == "single-file":
        with atomic_folder(tokenizer_folder) as tmp:  # first: the model's name appears only when it is usable
            _write_tokenizers(components, tmp)
        with atomic_path(out) as tmp:
            save_file({key: value.contiguous() for key, value in components_to_ldm(components).items()}, str(tmp))
    else:
        with atomic_folder(out) as tmp:
            _write_diffusers_folder(components, tmp)
            _write_tokenizers(components, tmp)
    return out


def _write_tiny_flux(components: ModelComponents, fmt: str, out: Path) -> None:
    """A diffusers FluxPipeline folder, or BFL's transformer file with clip_l, t5xxl and ae files beside it."""
    from traintrain.models.flux_loading import COMPANIONS
    from traintrain.models.flux_tiny import write_flux_diffusers, write_flux_single_file

    if fmt == "diffusers":
        write_flux_diffusers(components, out)
        return
    for companion in COMPANIONS:
        if (target := out.with_name(companion.example)).exists():
            raise UserError(f"{target}: already exists; write the Flux model into another folder")
    write_flux_single_file(components, out)


def _write_tokenizers(components: ModelComponents, folder: Path) -> None:
    for tokenizer, name in zip(components.tokenizers, TOKENIZER_FOLDERS, strict=False):
        save_tokenizer(tokenizer, folder / name)


def _write_diffusers_folder(components: ModelComponents, out: Path) -> None:
    """Written into a fresh temporary folder, so the libraries' own writers need not be atomic."""
    components.unet.save_pretrained(str(out / "unet"), safe_serialization=True)
    components.vae.save_pretrained(str(out / "vae"), safe_serialization=True)
    for encoder, folder in zip(components.text_encoders, TEXT_ENCODER_FOLDERS, strict=False):
        encoder.save_pretrained(str(out / folder), safe_serialization=True)
    DDPMScheduler.from_config(config_template(components.family, "scheduler")).save_pretrained(str(out / "scheduler"))
    model_index = json.loads((CONFIG_ROOT / components.family.value / "model_index.json").read_text())
    (out / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
