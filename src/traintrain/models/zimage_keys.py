"""Z-Image transformer weights: the reference single-file layout <-> diffusers' ZImageTransformer2DModel.

The single file users download (ComfyUI's `z_image_turbo_bf16.safetensors`) keeps the original release's
names: fused `attention.qkv`, `attention.out`, `q_norm`/`k_norm`, one `x_embedder` and `final_layer`
(diffusers keeps them per patch size, `all_x_embedder.2-1`), and a `norm_final.weight` Z-Image never uses.
diffusers' own converter reads that layout at any width and offline, so it is used as it is; the reverse,
which diffusers lacks, writes our tiny test models in the same layout. A file carries no config: the widths
and counts are read from the tensor shapes into the bundled template.
"""

from __future__ import annotations

import re

import torch

from traintrain.models.assembly import config_template
from traintrain.models.families import FLUX_PREFIXES, Family

TRANSFORMER_ROOTS = ("x_embedder.", "final_layer.", "t_embedder.", "cap_embedder.", "layers.", "noise_refiner.",
                     "context_refiner.", "x_pad_token", "cap_pad_token", "norm_final.")
PAD_TOKENS = ("x_pad_token", "cap_pad_token")
UNUSED = "norm_final.weight"  # the original code's model-level norm; its final layer has its own
# diffusers name -> reference name, for the tensors renamed one to one
RENAMED = ((".attention.to_out.0.", ".attention.out."), (".attention.norm_q.", ".attention.q_norm."),
           (".attention.norm_k.", ".attention.k_norm."))
FUSED_QKV = (".attention.to_q.weight", ".attention.to_k.weight", ".attention.to_v.weight")


def transformer_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformer's tensors of a file, without ComfyUI's `model.diffusion_model.` prefix or any bundled
    text encoder / VAE."""
    prefix = next((p for p in reversed(FLUX_PREFIXES) if f"{p}cap_embedder.1.weight" in state), "")
    return {key[len(prefix):]: value for key, value in state.items()
            if key.startswith(prefix) and key[len(prefix):].startswith(TRANSFORMER_ROOTS)}


def reference_to_diffusers(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference weights (prefix stripped) -> ZImageTransformer2DModel's state dict, by diffusers' converter
    (imported here: the hosts' diffusers 0.31 has no Z-Image)."""
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    converted = convert_z_image_transformer_checkpoint_to_diffusers(dict(weights))
    for name in PAD_TOKENS:  # older exports store the pad tokens as [D]; the model holds [1, D]
        if name in converted and converted[name].ndim == 1:
            converted[name] = converted[name].unsqueeze(0)
    return converted


def diffusers_to_reference(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """ZImageTransformer2DModel's state dict -> the reference layout, `norm_final.weight` included as the
    released files hold it."""
    patch = f"{config['all_patch_size'][0]}-{config['all_f_patch_size'][0]}"
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(FUSED_QKV[1:]):
            continue
        if key.endswith(FUSED_QKV[0]):
            base = key.removesuffix(FUSED_QKV[0])
            out[base + ".attention.qkv.weight"] = torch.cat([state[base + part] for part in FUSED_QKV])
            continue
        for diffusers_name, reference_name in RENAMED:
            key = key.replace(diffusers_name, reference_name)
        key = key.replace(f"all_x_embedder.{patch}.", "x_embedder.").replace(f"all_final_layer.{patch}.",
                                                                            "final_layer.")
        out[key] = value
    out[UNUSED] = torch.ones(config["dim"])
    return out


def transformer_config(weights: dict[str, torch.Tensor]) -> dict:
    """ZImageTransformer2DModel config from reference tensor shapes, on the bundled Z-Image-Turbo template.

    The patch sizes, RoPE theta and lengths, norm epsilon and time scale are not in the shapes: the
    template's (the release's) values stand. The RoPE axes keep the release's proportions for the head width.
    """
    template = config_template(Family.ZIMAGE, "transformer")
    dim, patch_inputs = weights["x_embedder.weight"].shape
    head = weights["layers.0.attention.q_norm.weight"].shape[0]
    patch = template["all_patch_size"][0] ** 2 * template["all_f_patch_size"][0]
    return template | {
        "dim": dim,
        "in_channels": patch_inputs // patch,
        "n_layers": block_count(weights, "layers"),
        "n_refiner_layers": block_count(weights, "noise_refiner"),
        "n_heads": dim // head,
        "n_kv_heads": dim // head,  # the release has no grouped KV heads: its qkv is three equal parts
        "cap_feat_dim": weights["cap_embedder.1.weight"].shape[1],
        "axes_dims": rope_axes(template["axes_dims"], head),
    }


def block_count(weights, name: str) -> int:
    found = {int(m[1]) for key in weights if (m := re.match(rf"{name}\.(\d+)\.", key))}
    if not found:
        raise KeyError(f"{name}.0")
    return max(found) + 1


def rope_axes(template: list[int], head_dim: int) -> list[int]:
    """The RoPE axes' widths for a head width, in the release's proportions (32:48:48 of 128)."""
    total = sum(template)
    axes = [width * head_dim // total for width in template]
    axes[0] += head_dim - sum(axes)
    return axes

