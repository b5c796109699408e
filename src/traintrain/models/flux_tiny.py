"""A tiny random Flux.1 model: the real architecture (double and single blocks, 16-channel VAE, CLIP-L and
T5 encoders) at toy widths, written in the formats users have: a diffusers FluxPipeline folder, or BFL's
single-file transformer with `clip_l.safetensors`, `t5xxl_fp16.safetensors` and `ae.safetensors` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel

from traintrain.fileio import atomic_folder, atomic_path
from traintrain.models.assembly import CONFIG_ROOT, config_template
from traintrain.models.components import ModelComponents
from traintrain.models.families import SPECS, Family
from traintrain.models.flux_keys import diffusers_to_bfl
from traintrain.models.flux_loading import COMPANIONS, rope_axes
from traintrain.models.flux_text import T5_FOLDER, build_tiny_t5_tokenizer
from traintrain.models.ldm_convert import VAE_PREFIX, clip_to_ldm, vae_to_ldm
from traintrain.models.tokenizers import TOKENIZER_FOLDERS, build_tiny_tokenizer, save_tokenizer

TINY_HEAD_DIM = 32  # the smallest width whose rotary axes (4, 14, 14) are all even
TINY_HEADS = 2
TINY_BLOCKS = (1, 1)  # double, single
TINY_CLIP_WIDTH = 64
TINY_T5_WIDTH = 32
TINY_VAE_CHANNELS = [32, 32, 32, 32]  # four levels: factor 8 as the real VAE; GroupNorm needs multiples of 32


def tiny_transformer_config() -> dict:
    return config_template(Family.FLUX, "transformer") | {
        "num_layers": TINY_BLOCKS[0],
        "num_single_layers": TINY_BLOCKS[1],
        "attention_head_dim": TINY_HEAD_DIM,
        "num_attention_heads": TINY_HEADS,
        "joint_attention_dim": TINY_T5_WIDTH,
        "pooled_projection_dim": TINY_CLIP_WIDTH,
        "axes_dims_rope": rope_axes(TINY_HEAD_DIM),
    }


def build_tiny_flux(seed: int = 0) -> ModelComponents:
    """A random Flux.1-dev-shaped model (guidance-distilled: it has the guidance input), the same per seed."""
    from traintrain.models.tiny import tiny_text_encoder

    tokenizers = [build_tiny_tokenizer(), build_tiny_t5_tokenizer()]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel.from_config(tiny_transformer_config())
        vae = AutoencoderKL.from_config(config_template(Family.FLUX, "vae") | {
            "block_out_channels": TINY_VAE_CHANNELS, "layers_per_block": 1, "sample_size": 128,
        })
        shape_latent_space(vae)
        clip = tiny_text_encoder(Family.SD1, 0, tokenizers[0])  # Flux's CLIP-L is SD1's text encoder
        t5 = T5EncoderModel(T5Config(**config_template(Family.FLUX, "text_encoder_2") | {
            "vocab_size": len(tokenizers[1]), "d_model": TINY_T5_WIDTH, "d_ff": 2 * TINY_T5_WIDTH, "d_kv": 16,
            "num_heads": 2, "num_layers": 1,
        }))
    for model in (transformer, vae, clip, t5):
        model.eval()
    return ModelComponents(Family.FLUX, transformer, vae, [clip, t5], tokenizers, source=f"tiny-flux-seed{seed}")


def shape_latent_space(vae: AutoencoderKL, family: Family = Family.FLUX) -> None:
    """As tiny.py's for SD VAEs (a nearly deterministic posterior, latents of std about 1 after the
    family's scale), on the encoder's last conv and the decoder's first: Flux's and SD3's VAEs have no
    quant convs."""
    gain = 1.0 / (0.3 * SPECS[family].latent_scale)
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.encoder.conv_out.weight[:channels] *= gain
        vae.encoder.conv_out.bias[:channels] *= gain
        vae.encoder.conv_out.weight[channels:] = 0.0
        vae.encoder.conv_out.bias[channels:] = -10.0
        vae.decoder.conv_in.weight /= gain


def write_flux_diffusers(components: ModelComponents, out: Path) -> None:
    with atomic_folder(out) as tmp:
        components.transformer.save_pretrained(str(tmp / "transformer"), safe_serialization=True)
        components.vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
        for encoder, folder in zip(components.text_encoders, ("text_encoder", "text_encoder_2"), strict=True):
            encoder.save_pretrained(str(tmp / folder), safe_serialization=True)
        FlowMatchEulerDiscreteScheduler.from_config(config_template(Family.FLUX, "scheduler")).save_pretrained(
            str(tmp / "scheduler"))
        _write_tokenizers(components, tmp)
        (tmp / "model_index.json").write_text((CONFIG_ROOT / "flux" / "model_index.json").read_text())


def write_flux_single_file(components: ModelComponents, out: Path) -> list[Path]:
    """BFL's transformer file, its companions beside it (named as BFL and ComfyUI name them) and the
    tokenizers in `X.tokenizer/`. Returns the companion files."""
    transformer = components.transformer
    config = transformer.config
    with atomic_folder(out.with_name(out.stem + ".tokenizer")) as tmp:
        _write_tokenizers(components, tmp)
    clip, t5 = components.text_encoders
    vae = {key.removeprefix(VAE_PREFIX): value for key, value in
           vae_to_ldm(components.vae.state_dict(), components.vae.config).items()}
    parts = {
        "CLIP-L text encoder": clip_to_ldm(clip.state_dict(), ""),  # transformers' own `text_model.*` keys
        "T5-XXL text encoder": {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"},
        "VAE": vae,
    }
    written = []
    for companion in COMPANIONS:
        target = out.with_name(companion.example)
        _save(parts[companion.name], target)
        written.append(target)
    bfl = diffusers_to_bfl(transformer.state_dict(), config.num_layers, config.num_single_layers)
    _save(bfl, out)
    return written


def _save(state: dict[str, torch.Tensor], target: Path) -> None:
    with atomic_path(target) as tmp:
        save_file({key: value.contiguous() for key, value in state.items()}, str(tmp))


def _write_tokenizers(components: ModelComponents, folder: Path) -> None:
    clip_tokenizer, t5_tokenizer = components.tokenizers
    save_tokenizer(clip_tokenizer, folder / TOKENIZER_FOLDERS[0])
    t5_tokenizer.save_pretrained(str(folder / T5_FOLDER))
    config = folder / T5_FOLDER / "tokenizer_config.json"  # keep the short limit the tiny model is tested with
    config.write_text(json.dumps(json.loads(config.read_text()) | {"model_max_length": t5_tokenizer.model_max_length}))
