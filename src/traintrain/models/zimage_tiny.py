"""A tiny random Z-Image model: the S3-DiT transformer (refiners and main layers), Flux's 16-channel VAE shape,
a Qwen3 text encoder and a Qwen2 BPE tokenizer built offline; written as a diffusers ZImagePipeline folder, or
as the reference single-file transformer with `qwen_3_4b.safetensors` and `ae.safetensors` beside it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from safetensors.torch import save_file

from traintrain.errors import UserError
from traintrain.fileio import atomic_folder, atomic_path
from traintrain.models.assembly import CONFIG_ROOT, config_template
from traintrain.models.components import ModelComponents
from traintrain.models.families import Family
from traintrain.models.flux_tiny import shape_latent_space
from traintrain.models.ldm_convert import VAE_PREFIX, vae_to_ldm
from traintrain.models.zimage_keys import diffusers_to_reference, rope_axes
from traintrain.models.zimage_single_file import QWEN3, VAE
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
        "axes_dims": rope_axes(template["axes_dims"], head),
    }


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


def write_zimage_single_file(components: ModelComponents, out: Path) -> list[Path]:
    """The transformer in the reference layout, its companions beside it (as ComfyUI names them: the text
    encoder in Qwen3ForCausalLM's `model.*` keys, the VAE in the LDM layout) and the tokenizer in
    `X.tokenizer/tokenizer/`. Returns the companion files."""
    companions = {QWEN3.name: out.with_name(QWEN3.example), VAE.name: out.with_name(VAE.example)}
    for target in companions.values():
        if target.exists():
            raise UserError(f"{target}: already exists; write the Z-Image model into another folder")
    with atomic_folder(out.with_name(out.stem + ".tokenizer")) as tmp:
        components.tokenizers[0].save_pretrained(str(tmp / TOKENIZER_FOLDER))
    encoder = {"model." + key: value for key, value in components.text_encoders[0].state_dict().items()}
    vae = {key.removeprefix(VAE_PREFIX): value for key, value in
           vae_to_ldm(components.vae.state_dict(), components.vae.config).items()}
    _save(encoder, companions[QWEN3.name])
    _save(vae, companions[VAE.name])
    transformer = components.transformer
    _save(diffusers_to_reference(transformer.state_dict(), transformer.config), out)
    return list(companions.values())


def _save(state: dict[str, torch.Tensor], target: Path) -> None:
    with atomic_path(target) as tmp:
        save_file({key: value.contiguous() for key, value in state.items()}, str(tmp))
