"""Load an SD3 / SD3.5 model offline: a diffusers folder (StableDiffusion3Pipeline), or Stability AI's
single files.

The reference files hold the MMDiT under `model.diffusion_model.` and the VAE under `first_stage_model.`;
the all-in-one ones (sd3_medium_incl_clips_t5xxlfp16.safetensors) add the text encoders under
`text_encoders.clip_l.transformer.`, `text_encoders.clip_g.transformer.` and `text_encoders.t5xxl.transformer.`
(transformers' own keys). The others (sd3_medium.safetensors, sd3.5_large.safetensors) expect clip_l,
clip_g and t5xxl files beside them or in ComfyUI's / Forge's folders, found as for Flux. T5 may be left
out (the reference's "no T5" setup): the model then trains on zeros in its place, with a warning.
Whatever else is missing is named in one UserError.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from diffusers.loaders.single_file_utils import (
    convert_sd3_transformer_checkpoint_to_diffusers,
)
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5EncoderModel

from traintrain.errors import UserError
from traintrain.models.assembly import assemble, config_template, count_children, load_pretrained, text_encoder_heads
from traintrain.models.checkpoint_reading import read_checkpoint
from traintrain.models.components import ModelComponents
from traintrain.models.discovery import pipeline_class, require_parts
from traintrain.models.families import FLUX_PREFIXES, Family
from traintrain.models.flow_schedule import folder_scheduler_config
from traintrain.models.flux_loading import Companion, _t5, ldm_vae, locate_companions
from traintrain.models.ldm_convert import VAE_PREFIX
from traintrain.models.sd3_keys import joint_block_count
from traintrain.models.sd3_text import find_sd3_tokenizers
from traintrain.training.events import Message, Reporter, ignore

TRANSFORMER_ROOTS = ("joint_blocks.", "x_embedder.", "t_embedder.", "y_embedder.", "context_embedder.",
                     "final_layer.", "pos_embed")
CLIP_L = Companion("CLIP-L text encoder", "text_encoders.clip_l.transformer.", ("clip_l*.safetensors",),
                   "clip_l.safetensors")
CLIP_G = Companion("CLIP-G text encoder", "text_encoders.clip_g.transformer.", ("clip_g*.safetensors",),
                   "clip_g.safetensors")
T5 = Companion("T5-XXL text encoder", "text_encoders.t5xxl.transformer.", ("t5xxl*.safetensors",),
               "t5xxl_fp16.safetensors")
VAE = Companion("VAE", VAE_PREFIX, ("sd3*vae*.safetensors", "sd3.5*vae*.safetensors"), "sd3_vae.safetensors")
COMPANIONS = (CLIP_L, CLIP_G, T5, VAE)
OPTIONAL = (T5,)


# ---- diffusers folders --------------------------------------------------------------------------


def is_sd3_folder(path: Path) -> bool:
    return pipeline_class(path) == "StableDiffusion3Pipeline"


def load_sd3_folder(path: Path, tokenizer_dir=None, report: Reporter = ignore) -> ModelComponents:
    require_parts(path, "SD3", "StableDiffusion3Pipeline", ("transformer", "vae", "text_encoder", "text_encoder_2"),
                  "transformer, vae, text_encoder, text_encoder_2, text_encoder_3")
    transformer = load_pretrained(SD3Transformer2DModel, path, "transformer")
    vae = load_pretrained(AutoencoderKL, path, "vae")
    encoders = [load_pretrained(CLIPTextModelWithProjection, path, folder)
                for folder in ("text_encoder", "text_encoder_2")]
    with_t5 = (path / "text_encoder_3" / "config.json").is_file()
    if with_t5:
        encoders.append(load_pretrained(T5EncoderModel, path, "text_encoder_3"))
    else:
        report(_without_t5(path))
    tokenizers = find_sd3_tokenizers(path, tokenizer_dir, report, with_t5=with_t5)
    return ModelComponents(Family.SD3, transformer, vae, encoders, tokenizers, source=str(path),
                           scheduler_config=folder_scheduler_config(path))


# ---- single files -------------------------------------------------------------------------------


def transformer_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MMDiT tensors of a file, without the `model.diffusion_model.` prefix or any bundled part."""
    prefix = next((p for p in reversed(FLUX_PREFIXES) if f"{p}context_embedder.weight" in state), "")
    return {key[len(prefix):]: value for key, value in state.items()
            if key.startswith(prefix) and key[len(prefix):].startswith(TRANSFORMER_ROOTS)}


def load_sd3_single_file(path: Path, tokenizer_dir=None, report: Reporter = ignore) -> ModelComponents:
    state = read_checkpoint(path)
    parts = find_companions(path, state)
    if T5.name not in parts:
        report(_without_t5(path))
    tokenizers = find_sd3_tokenizers(path, tokenizer_dir, report, with_t5=T5.name in parts)
    weights = transformer_weights(state)
    try:
        config = transformer_config(weights)
    except (KeyError, IndexError, ValueError) as error:
        raise UserError(f"{path}: SD3 transformer with missing or odd weights ({error})",
                        "the file is incomplete or not an SD3 / SD3.5 model", field="model") from error
    transformer = assemble(SD3Transformer2DModel.from_config, config,
                           lambda m: convert_sd3_transformer_checkpoint_to_diffusers(dict(weights)), path,
                           "transformer")
    encoders: list = [_clip(*parts[companion.name], tokenizer, companion, template)
                for companion, tokenizer, template in ((CLIP_L, tokenizers[0], "text_encoder"),
                                                      (CLIP_G, tokenizers[1], "text_encoder_2"))]
    if T5.name in parts:
        encoders.append(_t5(*parts[T5.name]))
    vae = ldm_vae(*parts[VAE.name], Family.SD3, _odd)
    return ModelComponents(Family.SD3, transformer, vae, encoders, tokenizers, source=str(path))


def find_companions(path: Path, state: dict[str, torch.Tensor]) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """Each part's source file and tensors (prefix removed); T5 may be missing, the rest is named in one error."""
    found, missing = locate_companions(path, state, COMPANIONS, OPTIONAL)
    if missing:
        names = ", ".join(f"the {c.name} ({c.example})" for c in missing)
        raise UserError(
            f"{path}: an SD3 model file without {names}",
            f"add {' and '.join(c.example for c in missing)} beside it (or in the clip/, text_encoders/ or vae/ "
            "folder next to its folder), give an all-in-one file (sd3_medium_incl_clips_t5xxlfp16.safetensors) "
            "or a diffusers SD3 folder",
            field="model",
        )
    return found


def transformer_config(weights: dict[str, torch.Tensor]) -> dict:
    """SD3Transformer2DModel config from the reference tensor shapes, on the bundled SD3 Medium template."""
    width, in_channels, patch, _ = weights["x_embedder.proj.weight"].shape
    layers = joint_block_count(weights)
    norm = "joint_blocks.0.x_block.attn.ln_q.weight"
    # q/k norms (SD3.5) record the head width; SD3.0 files cannot say: its heads are 64 wide
    head = weights[norm].shape[0] if norm in weights else (64 if width % 64 == 0 else width)
    caption, joint = weights["context_embedder.weight"].shape
    return config_template(Family.SD3, "transformer") | {
        "in_channels": in_channels,
        "out_channels": weights["final_layer.linear.weight"].shape[0] // (patch * patch),
        "patch_size": patch,
        "num_layers": layers,
        "attention_head_dim": head,
        "num_attention_heads": width // head,
        "joint_attention_dim": joint,
        "caption_projection_dim": caption,
        "pooled_projection_dim": weights["y_embedder.mlp.0.weight"].shape[1],
        "pos_embed_max_size": round(weights["pos_embed"].shape[1] ** 0.5),
        "qk_norm": "rms_norm" if norm in weights else None,
        "dual_attention_layers": sorted({int(k.split(".")[1]) for k in weights if ".x_block.attn2." in k}),
    }


def _clip(source: Path, weights: dict[str, torch.Tensor], tokenizer, companion: Companion,
          template: str) -> CLIPTextModelWithProjection:
    """A CLIP text encoder with projection from transformers' keys (`text_model.*`, `text_projection.weight`);
    a CLIP-L file without the projection (as Flux's clip_l.safetensors) gets the identity, as ComfyUI gives it."""
    weights = {k: v for k, v in weights.items() if k.startswith(("text_model.", "text_projection."))
               and not k.endswith("position_ids")}
    try:
        embedding = weights["text_model.embeddings.token_embedding.weight"]
        hidden = embedding.shape[1]
        if "text_projection.weight" not in weights:
            weights["text_projection.weight"] = torch.eye(hidden, dtype=embedding.dtype)
        config = config_template(Family.SD3, template) | {
            "vocab_size": embedding.shape[0],
            "hidden_size": hidden,
            "num_attention_heads": text_encoder_heads(hidden),
            "num_hidden_layers": count_children(weights, "text_model.encoder.layers."),
            "intermediate_size": weights["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            "max_position_embeddings": weights["text_model.embeddings.position_embedding.weight"].shape[0],
            "projection_dim": weights["text_projection.weight"].shape[0],
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    except (KeyError, IndexError) as error:
        raise _odd(source, companion.name, error) from error

    def own_weights(model) -> dict[str, torch.Tensor]:  # the position ids are the model's own buffer
        return weights | {k: v for k, v in model.state_dict().items() if k.endswith("position_ids")}

    return assemble(lambda c: CLIPTextModelWithProjection(CLIPTextConfig.from_dict(c)), config, own_weights, source,
                    companion.name)


def _without_t5(path: Path) -> Message:
    return Message(f"{path}: no T5-XXL text encoder; SD3 is conditioned on CLIP-L and CLIP-G alone (zeros in T5's "
                   "place, as the reference allows). Add t5xxl_fp16.safetensors (or text_encoder_3/) to use it",
                   "warning")


def _odd(source: Path, what: str, error: BaseException) -> UserError:
    return UserError(f"{source}: {what} with missing or odd weights ({error})",
                     f"give the SD3 {what} file", field="model")
