"""Load a Z-Image model from its reference single file and the companions ComfyUI keeps beside it.

The release's transformer comes alone (`z_image_turbo_bf16.safetensors`, ComfyUI's diffusion_models/);
the Qwen3-4B text encoder (`qwen_3_4b.safetensors`, transformers' Qwen3ForCausalLM keys `model.layers.*`)
and Flux's VAE (`ae.safetensors`, LDM layout) sit in text_encoders/ and vae/, found as Flux's companions are.
All-in-one files that hold them under `text_encoders.qwen3_4b.transformer.` and `vae.` are read too. What is
found nowhere is named in one UserError, with where to put it. The tokenizer comes from `tokenizer_dir`,
`X.tokenizer/` beside the file or the Hugging Face cache, as for the diffusers folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from traintrain.errors import UserError
from traintrain.models.assembly import assemble, config_template, count_children
from traintrain.models.checkpoint_reading import read_checkpoint
from traintrain.models.components import ModelComponents
from traintrain.models.families import Family
from traintrain.models.flux_loading import COMPANIONS as FLUX_COMPANIONS
from traintrain.models.flux_loading import Companion, ldm_vae, locate_companions
from traintrain.models.zimage_keys import reference_to_diffusers, transformer_config, transformer_weights
from traintrain.models.zimage_text import find_zimage_tokenizer, zimage_class
from traintrain.training.events import Reporter, ignore

QWEN3 = Companion("Qwen3-4B text encoder", "text_encoders.qwen3_4b.transformer.",
                  ("qwen_3_4b*.safetensors", "qwen3_4b*.safetensors", "qwen3-4b*.safetensors"), "qwen_3_4b.safetensors")
VAE = Companion("VAE", "vae.", next(c for c in FLUX_COMPANIONS if c.name == "VAE").patterns, "ae.safetensors")
COMPANIONS = (QWEN3, VAE)
# ComfyUI's models/ subfolder for each companion, for the message
COMFYUI_FOLDERS = {QWEN3.name: "text_encoders", VAE.name: "vae"}
QWEN3_ROOTS = ("embed_tokens.", "layers.", "norm.")


def load_zimage_single_file(path: Path, tokenizer_dir=None, report: Reporter = ignore) -> ModelComponents:
    transformer_class = zimage_class("ZImageTransformer2DModel")  # first: the hosts' diffusers 0.31 lacks it
    state = read_checkpoint(path)
    weights = transformer_weights(state)
    parts = find_companions(path, state)
    tokenizer = find_zimage_tokenizer(path, tokenizer_dir)
    try:
        config = transformer_config(weights)
    except (KeyError, IndexError, ValueError) as error:
        raise UserError(f"{path}: Z-Image transformer with missing or odd weights ({error})",
                        "the file is incomplete or not a Z-Image transformer", field="model") from error
    transformer = assemble(transformer_class.from_config, config,
                           lambda m: reference_to_diffusers(weights), path, "transformer")
    encoder = qwen3_encoder(*parts[QWEN3.name])
    vae = ldm_vae(*parts[VAE.name], Family.ZIMAGE, _odd)
    return ModelComponents(Family.ZIMAGE, transformer, vae, [encoder], [tokenizer], source=str(path))


def find_companions(path: Path, state: dict[str, torch.Tensor]) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """Each companion's source file and tensors (prefix removed); one UserError names every one not found."""
    found, missing = locate_companions(path, state, COMPANIONS)
    if missing:
        names = " and ".join(f"the {c.name} ({c.example})" for c in missing)
        places = " and ".join(f"{c.example} to {path.parent.parent / COMFYUI_FOLDERS[c.name]}" for c in missing)
        raise UserError(f"{path}: a Z-Image transformer alone, without {names}",
                        f"add {places} (ComfyUI's folders) or beside the model in {path.parent}, "
                        "or give a diffusers Z-Image folder", field="model")
    return found


def qwen3_encoder(source: Path, weights: dict[str, torch.Tensor]):
    """Qwen3Model from transformers' causal-LM keys (`model.layers.*`, as qwen_3_4b.safetensors holds them) or
    its own bare ones; the language-model head, unused for conditioning, is dropped."""
    weights = {key.removeprefix("model."): value for key, value in weights.items()}
    weights = {key: value for key, value in weights.items() if key.startswith(QWEN3_ROOTS)}
    try:
        embedding = weights["embed_tokens.weight"]
        head = weights["layers.0.self_attn.q_norm.weight"].shape[0]
        config = config_template(Family.ZIMAGE, "text_encoder") | {
            "vocab_size": embedding.shape[0],
            "hidden_size": embedding.shape[1],
            "num_hidden_layers": count_children(weights, "layers."),
            "head_dim": head,
            "num_attention_heads": weights["layers.0.self_attn.q_proj.weight"].shape[0] // head,
            "num_key_value_heads": weights["layers.0.self_attn.k_proj.weight"].shape[0] // head,
            "intermediate_size": weights["layers.0.mlp.gate_proj.weight"].shape[0],
        }
    except (KeyError, IndexError) as error:
        raise _odd(source, QWEN3.name, error) from error
    return assemble(lambda c: zimage_class("Qwen3Model")(zimage_class("Qwen3Config")(**c)), config,
                    lambda m: weights, source, QWEN3.name)


def _odd(source: Path, what: str, error: BaseException) -> UserError:
    return UserError(f"{source}: {what} with missing or odd weights ({error})",
                     f"give Z-Image's {what} file", field="model")
