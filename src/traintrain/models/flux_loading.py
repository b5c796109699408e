"""Load a Flux.1 model offline: a diffusers folder (FluxPipeline), or BFL's single-file transformer with
its companions.

Black Forest Labs ship the transformer alone (`flux1-dev.safetensors`); the text encoders and the VAE
are separate files that ComfyUI and Forge keep beside it or in sibling folders (`clip/`,
`text_encoders/`, `vae/`): `clip_l.safetensors` (transformers' CLIPTextModel keys),
`t5xxl_*.safetensors` (T5EncoderModel keys) and `ae.safetensors` (the VAE in the LDM layout).
All-in-one files that hold them under `text_encoders.clip_l.transformer.`, `text_encoders.t5xxl.transformer.`
and `vae.` are read too. What is found nowhere is named in one UserError, with where to put it.
A single file carries no config: dimensions are read from the tensor shapes into the bundled templates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from transformers import CLIPTextModel, T5Config, T5EncoderModel

from traintrain.errors import UserError
from traintrain.models.assembly import assemble, build_text_encoder, config_template, count_children, load_pretrained
from traintrain.models.checkpoint_reading import read_checkpoint
from traintrain.models.components import ModelComponents
from traintrain.models.discovery import pipeline_class, require_parts
from traintrain.models.families import Family
from traintrain.models.flow_schedule import folder_scheduler_config
from traintrain.models.flux_keys import bfl_to_diffusers, block_counts, strip_prefix
from traintrain.models.flux_text import find_flux_tokenizers
from traintrain.models.ldm_convert import TEXT_ENCODER_PREFIXES, VAE_PREFIX
from traintrain.models.sd_loading import clip_configs_from_ldm, convert_clip_from_ldm, vae_config_from_ldm
from traintrain.training.events import Reporter, ignore

TRANSFORMER_ROOTS = ("double_blocks.", "single_blocks.", "time_in.", "vector_in.", "guidance_in.", "txt_in.",
                     "img_in.", "final_layer.")
# The model's folder, then siblings where ComfyUI (clip, text_encoders, vae) and Forge (text_encoder, VAE) keep them.
COMPANION_FOLDERS = (".", "../clip", "../text_encoders", "../text_encoder", "../vae", "../VAE")
# CLIP-L as SD1 uses it: its single-file prefix and config template serve Flux's first text encoder.
CLIP_PREFIX = TEXT_ENCODER_PREFIXES[Family.SD1][0]


@dataclass(frozen=True)
class Companion:
    """One part a transformer-only file lacks: where an all-in-one file keeps it, and the files that hold it."""

    name: str
    prefix: str  # inside an all-in-one file
    patterns: tuple[str, ...]  # file names beside the model or in COMPANION_FOLDERS
    example: str  # the usual file name, for the message


COMPANIONS = (
    Companion("CLIP-L text encoder", "text_encoders.clip_l.transformer.", ("clip_l*.safetensors",),
              "clip_l.safetensors"),
    Companion("T5-XXL text encoder", "text_encoders.t5xxl.transformer.", ("t5xxl*.safetensors",),
              "t5xxl_fp16.safetensors"),
    Companion("VAE", "vae.", ("ae.safetensors", "ae.*.safetensors", "*flux*vae*.safetensors"), "ae.safetensors"),
)


# ---- diffusers folders --------------------------------------------------------------------------


def is_flux_folder(path: Path) -> bool:
    return pipeline_class(path) == "FluxPipeline"


def load_flux_folder(path: Path, tokenizer_dir=None, report: Reporter = ignore) -> ModelComponents:
    require_parts(path, "Flux", "FluxPipeline", ("transformer", "vae", "text_encoder", "text_encoder_2"))
    transformer = load_pretrained(FluxTransformer2DModel, path, "transformer")
    vae = load_pretrained(AutoencoderKL, path, "vae")
    encoders = [load_pretrained(CLIPTextModel, path, "text_encoder"), load_pretrained(T5EncoderModel, path,
                                                                                      "text_encoder_2")]
    tokenizers = find_flux_tokenizers(path, tokenizer_dir, report)
    return ModelComponents(Family.FLUX, transformer, vae, encoders, tokenizers, source=str(path),
                           scheduler_config=folder_scheduler_config(path))


# ---- single files -------------------------------------------------------------------------------


def transformer_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The BFL transformer tensors of a file, without ComfyUI's prefix or any bundled encoder/VAE."""
    return {key: value for key, value in strip_prefix(state).items() if key.startswith(TRANSFORMER_ROOTS)}


def load_flux_single_file(path: Path, tokenizer_dir=None, report: Reporter = ignore) -> ModelComponents:
    state = read_checkpoint(path)
    parts = find_companions(path, state)
    tokenizers = find_flux_tokenizers(path, tokenizer_dir, report)
    weights = transformer_weights(state)
    try:
        config = transformer_config(weights)
    except (KeyError, IndexError, ValueError) as error:
        raise UserError(f"{path}: Flux transformer with missing or odd weights ({error})",
                        "the file is incomplete or not a Flux.1 transformer", field="model") from error
    transformer = assemble(FluxTransformer2DModel.from_config, config, lambda m: bfl_to_diffusers(weights), path,
                           "transformer")
    clip_source, clip_state = parts["CLIP-L text encoder"]
    t5_source, t5_state = parts["T5-XXL text encoder"]
    encoders = [_clip(clip_source, clip_state, tokenizers[0]), _t5(t5_source, t5_state)]
    vae = ldm_vae(*parts["VAE"], Family.FLUX, _odd)
    return ModelComponents(Family.FLUX, transformer, vae, encoders, tokenizers, source=str(path))


def find_companions(path: Path, state: dict[str, torch.Tensor]) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """Each companion's source file and tensors (prefix removed); a UserError names every one not found."""
    found, missing = locate_companions(path, state, COMPANIONS)
    if missing:
        names = ", ".join(f"the {c.name} ({c.example})" for c in missing)
        raise UserError(
            f"{path}: a Flux transformer alone, without {names}",
            f"add {' and '.join(c.example for c in missing)} beside it (or in the clip/, text_encoders/ or vae/ "
            "folder next to its folder), or give a diffusers Flux folder",
            field="model",
        )
    return found


def locate_companions(path: Path, state: dict[str, torch.Tensor], companions, optional=()
                      ) -> tuple[dict[str, tuple[Path, dict[str, torch.Tensor]]], list[Companion]]:
    """Each companion's source file and tensors (prefix removed): inside the model file, else a file beside it or
    in the sibling folders; and the companions found nowhere (the `optional` ones left out), for each family to
    name in its own error."""
    found, missing = {}, []
    for companion in companions:
        inside = {k[len(companion.prefix):]: v for k, v in state.items() if k.startswith(companion.prefix)}
        if inside:
            found[companion.name] = (path, inside)
        elif (file := companion_file(path, companion)) is not None:
            found[companion.name] = (file, read_checkpoint(file))
        elif companion not in optional:
            missing.append(companion)
    return found, missing


def companion_file(path: Path, companion: Companion) -> Path | None:
    """The first file matching the companion's names beside the model, then in the sibling folders."""
    for folder in COMPANION_FOLDERS:
        directory = (path.parent / folder).resolve()
        if not directory.is_dir():
            continue
        for pattern in companion.patterns:
            matches = sorted(f for f in directory.glob(pattern) if f.is_file() and f != path.resolve())
            if matches:
                return matches[0]
    return None


def transformer_config(weights: dict[str, torch.Tensor]) -> dict:
    """FluxTransformer2DModel config from BFL tensor shapes, on the bundled FLUX.1-dev template."""
    double, single = block_counts(weights)
    width, in_channels = weights["img_in.weight"].shape
    head = weights["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0] if double else (
        weights["single_blocks.0.norm.query_norm.scale"].shape[0])
    return config_template(Family.FLUX, "transformer") | {
        "in_channels": in_channels,
        "num_layers": double,
        "num_single_layers": single,
        "attention_head_dim": head,
        "num_attention_heads": width // head,
        "joint_attention_dim": weights["txt_in.weight"].shape[1],
        "pooled_projection_dim": weights["vector_in.in_layer.weight"].shape[1],
        "guidance_embeds": "guidance_in.in_layer.weight" in weights,
        "axes_dims_rope": rope_axes(head),
    }


def rope_axes(head_dim: int) -> list[int]:
    """Rotary dims per position axis (index, row, column): no file stores them; FLUX.1's (16, 56, 56) of its
    128-wide heads, in the same proportion for other widths."""
    return [head_dim // 8, 7 * head_dim // 16, 7 * head_dim // 16]


def _clip(source: Path, weights: dict[str, torch.Tensor], tokenizer) -> CLIPTextModel:
    """CLIP-L from transformers' keys (`text_model.*`, as clip_l.safetensors holds them)."""
    state = {CLIP_PREFIX + key: value for key, value in weights.items() if key.startswith("text_model.")}
    try:
        config = clip_configs_from_ldm(Family.SD1, state, [tokenizer])[0]
    except (KeyError, IndexError, ValueError) as error:
        raise _odd(source, "CLIP-L text encoder", error) from error
    return assemble(build_text_encoder, config, lambda m: convert_clip_from_ldm(Family.SD1, 0, state, m), source,
                    "CLIP-L text encoder")


def _t5(source: Path, weights: dict[str, torch.Tensor]) -> T5EncoderModel:
    """T5's encoder from its own keys (`encoder.block.*`, `shared.weight`, as t5xxl_*.safetensors holds them)."""
    weights = {key: value for key, value in weights.items() if key.startswith(("encoder.", "shared."))}
    try:
        embedding = weights["shared.weight"] if "shared.weight" in weights else weights["encoder.embed_tokens.weight"]
        attention = "encoder.block.0.layer.0.SelfAttention."
        heads = weights[attention + "relative_attention_bias.weight"].shape[1]
        config = config_template(Family.FLUX, "text_encoder_2") | {
            "vocab_size": embedding.shape[0],
            "d_model": embedding.shape[1],
            "num_layers": count_children(weights, "encoder.block."),
            "num_heads": heads,
            "d_kv": weights[attention + "q.weight"].shape[0] // heads,
            "d_ff": weights["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0],
        }
    except (KeyError, IndexError, AttributeError) as error:
        raise _odd(source, "T5-XXL text encoder", error) from error
    weights |= {"shared.weight": embedding, "encoder.embed_tokens.weight": embedding}  # tied: files keep one
    return assemble(lambda c: T5EncoderModel(T5Config(**c)), config, lambda m: weights, source, "T5 text encoder")


def ldm_vae(source: Path, weights: dict[str, torch.Tensor], family: Family,
            odd: Callable[[Path, str, BaseException], UserError]) -> AutoencoderKL:
    """A 16-channel VAE from LDM-layout keys (`encoder.down.*`, as BFL's ae.safetensors holds them, or with
    `first_stage_model.` removed); `odd` words the family's error for weights that do not fit."""
    state = {VAE_PREFIX + key.removeprefix(VAE_PREFIX): value for key, value in weights.items()}
    try:
        config = vae_config_from_ldm(family, state)
    except (KeyError, IndexError, ValueError) as error:
        raise odd(source, "VAE", error) from error
    return assemble(AutoencoderKL.from_config, config, lambda m: convert_ldm_vae_checkpoint(state, config), source,
                    "VAE")


def _odd(source: Path, what: str, error: BaseException) -> UserError:
    return UserError(f"{source}: {what} with missing or odd weights ({error})",
                     f"give the Flux.1 {what} file", field="model")
