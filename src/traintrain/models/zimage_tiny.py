"""A tiny random Z-Image model: the S3-DiT transformer (refiners and main layers), Flux's 16-channel VAE shape,
a Qwen3 text encoder and a Qwen2 BPE tokenizer built offline; written as a diffusers ZImagePipeline folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

from traintrain.fileio import atomic_folder
from traintrain.models.components import ModelComponents
from traintrain.models.families import Family
from traintrain.models.flux_tiny import shape_latent_space
from traintrain.models.loading import CONFIG_ROOT, config_template
from traintrain.models.zimage_text import TOKENIZER_FOLDER, build_tiny_qwen_tokenizer, zimage_class

TINY_DIM, TINY_HEADS, TINY_LAYERS, TINY_REFINERS = 64, 2, 2, 1
TINY_TEXT_WIDTH = 32
TINY_VAE_CHANNELS = [32, 32, 32, 32]


def tiny_transformer_config() -> dict:
    head = TINY_DIM // TINY_HEADS
    template = config_template(Family.ZIMAGE, "transformer")
    return template | {
        "dim": TINY_DIM, "n_heads": TINY_HEADS, "n_kv_heads": TINY_HEADS, "n_layers": TINY_LAYERS,
        "n_refiner_layers": TINY_REFINERS, "cap_feat_dim": TINY_TEXT_WIDTH,
        "axes_dims": rope_axes(template["axes_dims"], head), "axes_lens": [256, 64, 64],
    }


def rope_axes(template: list[int], head_dim: int) -> list[int]:
    """The RoPE axes' widths for a head width, in the release's proportions (32:48:48 of 128)."""
    total = sum(template)
    axes = [width * head_dim // total for width in template]
    axes[0] += head_dim - sum(axes)
    return axes


def build_tiny_zimage(seed: int = 0) -> ModelComponents:
    """A random Z-Image-shaped model, the same per seed."""
    tokenizer = build_tiny_qwen_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = zimage_class("ZImageTransformer2DModel").from_config(tiny_transformer_config())
        vae = AutoencoderKL.from_config(config_template(Family.ZIMAGE, "vae") | {
            "block_out_channels": TINY_VAE_CHANNELS, "layers_per_block": 1, "sample_size": 128,
        })
        shape_latent_space(vae, Family.ZIMAGE)
        text_config = zimage_class("Qwen3Config")
        encoder = zimage_class("Qwen3Model")(text_config(**config_template(Family.ZIMAGE, "text_encoder") | {
            "vocab_size": len(tokenizer), "hidden_size": TINY_TEXT_WIDTH, "intermediate_size": 2 * TINY_TEXT_WIDTH,
            "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
            "max_position_embeddings": 256,
        }))
    for model in (transformer, vae, encoder):
        model.eval()
    return ModelComponents(Family.ZIMAGE, transformer, vae, [encoder], [tokenizer], source=f"tiny-zimage-seed{seed}")


def write_zimage_diffusers(components: ModelComponents, out: Path) -> None:
    with atomic_folder(out) as tmp:
        components.transformer.save_pretrained(str(tmp / "transformer"), safe_serialization=True)
        components.vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
        components.text_encoders[0].save_pretrained(str(tmp / "text_encoder"), safe_serialization=True)
        FlowMatchEulerDiscreteScheduler.from_config(config_template(Family.ZIMAGE, "scheduler")).save_pretrained(
            str(tmp / "scheduler"))
        components.tokenizers[0].save_pretrained(str(tmp / TOKENIZER_FOLDER))
        (tmp / "model_index.json").write_text((CONFIG_ROOT / "zimage" / "model_index.json").read_text())
