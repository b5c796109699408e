"""A tiny random SD3.5-Medium-shaped model: joint blocks with q/k norms and, in the first, the second image
attention; a 16-channel VAE; CLIP-L and CLIP-G with projections and T5; written as a diffusers
StableDiffusion3Pipeline folder or as the reference single file (all-in-one, or with its text encoders in
clip_l / clip_g / t5xxl files beside it, as ComfyUI keeps them).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from traintrain.fileio import atomic_folder, atomic_path
from traintrain.models.assembly import CONFIG_ROOT, config_template
from traintrain.models.components import ModelComponents
from traintrain.models.families import Family
from traintrain.models.flux_text import build_tiny_t5_tokenizer
from traintrain.models.flux_tiny import shape_latent_space
from traintrain.models.ldm_convert import UNET_PREFIX, vae_to_ldm
from traintrain.models.sd3_keys import diffusers_to_sd3
from traintrain.models.sd3_loading import CLIP_G, CLIP_L, T5
from traintrain.models.sd3_text import T5_FOLDER
from traintrain.models.tokenizers import TOKENIZER_FOLDERS, build_tiny_tokenizer, save_tokenizer

TINY_HEAD_DIM, TINY_HEADS, TINY_LAYERS = 16, 2, 2
TINY_CLIP_WIDTHS = (32, 48)  # CLIP-L, CLIP-G: their concatenation is zero-padded to T5's width
TINY_T5_WIDTH = 96
TINY_VAE_CHANNELS = [32, 32, 32, 32]
ENCODER_FOLDERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def tiny_transformer_config() -> dict:
    return config_template(Family.SD3, "transformer") | {
        "num_layers": TINY_LAYERS,
        "attention_head_dim": TINY_HEAD_DIM,
        "num_attention_heads": TINY_HEADS,
        "caption_projection_dim": TINY_HEAD_DIM * TINY_HEADS,
        "joint_attention_dim": TINY_T5_WIDTH,
        "pooled_projection_dim": sum(TINY_CLIP_WIDTHS),
        "pos_embed_max_size": 16,  # latents up to 32x32 (256 px)
        "sample_size": 32,
        "qk_norm": "rms_norm",
        "dual_attention_layers": [0],
    }


def build_tiny_sd3(seed: int = 0) -> ModelComponents:
    """A random SD3.5-Medium-shaped model, the same per seed."""
    tokenizers = [build_tiny_tokenizer(), build_tiny_tokenizer(), build_tiny_t5_tokenizer()]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel.from_config(tiny_transformer_config())
        vae = AutoencoderKL.from_config(config_template(Family.SD3, "vae") | {
            "block_out_channels": TINY_VAE_CHANNELS, "layers_per_block": 1, "sample_size": 128,
        })
        shape_latent_space(vae, Family.SD3)
        clips = [_tiny_clip(folder, width, tokenizer)
                 for folder, width, tokenizer in zip(ENCODER_FOLDERS, TINY_CLIP_WIDTHS, tokenizers, strict=False)]
        t5 = T5EncoderModel(T5Config(**config_template(Family.SD3, "text_encoder_3") | {
            "vocab_size": len(tokenizers[2]), "d_model": TINY_T5_WIDTH, "d_ff": 2 * TINY_T5_WIDTH, "d_kv": 16,
            "num_heads": 2, "num_layers": 1,
        }))
    for model in (transformer, vae, *clips, t5):
        model.eval()
    return ModelComponents(Family.SD3, transformer, vae, [*clips, t5], tokenizers, source=f"tiny-sd3-seed{seed}")


def _tiny_clip(folder: str, width: int, tokenizer) -> CLIPTextModelWithProjection:
    config = config_template(Family.SD3, folder) | {
        "hidden_size": width, "num_hidden_layers": 2, "num_attention_heads": 1, "intermediate_size": 2 * width,
        "projection_dim": width, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
    }
    return CLIPTextModelWithProjection(CLIPTextConfig.from_dict(config))


def write_sd3_diffusers(components: ModelComponents, out: Path) -> None:
    with atomic_folder(out) as tmp:
        components.transformer.save_pretrained(str(tmp / "transformer"), safe_serialization=True)
        components.vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
        for encoder, folder in zip(components.text_encoders, ENCODER_FOLDERS, strict=False):
            encoder.save_pretrained(str(tmp / folder), safe_serialization=True)
        FlowMatchEulerDiscreteScheduler.from_config(config_template(Family.SD3, "scheduler")).save_pretrained(
            str(tmp / "scheduler"))
        write_sd3_tokenizers(components, tmp)
        (tmp / "model_index.json").write_text((CONFIG_ROOT / "sd3" / "model_index.json").read_text())


def write_sd3_single_file(components: ModelComponents, out: Path, *, with_text_encoders: bool = True) -> list[Path]:
    """The reference file: MMDiT and VAE, and either the text encoders inside (all-in-one, as
    sd3_medium_incl_clips_t5xxlfp16.safetensors) or clip_l / clip_g / t5xxl files beside it (returned).
    Tokenizers go in `X.tokenizer/`."""
    with atomic_folder(out.with_name(out.stem + ".tokenizer")) as tmp:
        write_sd3_tokenizers(components, tmp)
    config = components.transformer.config
    state = {UNET_PREFIX + k: v for k, v in diffusers_to_sd3(components.transformer.state_dict(),
                                                              config.num_layers).items()}
    state |= vae_to_ldm(components.vae.state_dict(), components.vae.config)  # under first_stage_model.
    parts = {companion: _encoder_weights(companion, encoder)
             for companion, encoder in zip((CLIP_L, CLIP_G, T5), components.text_encoders, strict=False)}
    written = []
    for companion, weights in parts.items():
        if with_text_encoders:
            state |= {companion.prefix + k: v for k, v in weights.items()}
        else:
            written.append(out.with_name(companion.example))
            _save(weights, written[-1])
    _save(state, out)
    return written


def _encoder_weights(companion, encoder) -> dict[str, torch.Tensor]:
    """transformers' own keys, as the reference files hold them (T5 keeps its embedding once, as `shared`)."""
    state = encoder.state_dict()
    if companion is T5:
        return {k: v for k, v in state.items() if k != "encoder.embed_tokens.weight"}
    return {k: v for k, v in state.items() if not k.endswith("position_ids")}


def _save(state: dict[str, torch.Tensor], target: Path) -> None:
    with atomic_path(target) as tmp:
        save_file({key: value.contiguous() for key, value in state.items()}, str(tmp))


def write_sd3_tokenizers(components: ModelComponents, folder: Path) -> None:
    for tokenizer, name in zip(components.tokenizers[:2], TOKENIZER_FOLDERS, strict=True):
        save_tokenizer(tokenizer, folder / name)
    if len(components.tokenizers) > 2:
        t5_tokenizer = components.tokenizers[2]
        t5_tokenizer.save_pretrained(str(folder / T5_FOLDER))
        config = folder / T5_FOLDER / "tokenizer_config.json"  # keep the tiny tokenizer's short limit
        config.write_text(json.dumps(json.loads(config.read_text()) | {
            "model_max_length": t5_tokenizer.model_max_length}))
