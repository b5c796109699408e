"""Flux.1 transformer weights: Black Forest Labs' single-file layout <-> diffusers' FluxTransformer2DModel.

diffusers ships the BFL -> diffusers converter (`convert_flux_transformer_checkpoint_to_diffusers`) but
it hard-codes the real model's width (3072) where it splits the single blocks' fused `linear1`, so it
cannot read any other width (our tiny test models), and there is no reverse. This one table serves both
directions at any width; tests check it against diffusers' converter on everything the width does not touch.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch

from traintrain.models.families import FLUX_PREFIXES

Entry = tuple[str, tuple[str, ...], str]  # (BFL module, diffusers module(s), how: plain / fused / swap / norm)

GLOBAL_MODULES: tuple[Entry, ...] = (
    ("time_in.in_layer", ("time_text_embed.timestep_embedder.linear_1",), "plain"),
    ("time_in.out_layer", ("time_text_embed.timestep_embedder.linear_2",), "plain"),
    ("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",), "plain"),
    ("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",), "plain"),
    ("guidance_in.in_layer", ("time_text_embed.guidance_embedder.linear_1",), "plain"),
    ("guidance_in.out_layer", ("time_text_embed.guidance_embedder.linear_2",), "plain"),
    ("txt_in", ("context_embedder",), "plain"),
    ("img_in", ("x_embedder",), "plain"),
    ("final_layer.linear", ("proj_out",), "plain"),
    # BFL's final modulation yields (shift, scale), diffusers' AdaLayerNormContinuous (scale, shift)
    ("final_layer.adaLN_modulation.1", ("norm_out.linear",), "swap"),
)
DOUBLE_MODULES: tuple[Entry, ...] = (
    ("img_mod.lin", ("norm1.linear",), "plain"),
    ("txt_mod.lin", ("norm1_context.linear",), "plain"),
    ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v"), "fused"),
    ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "fused"),
    ("img_attn.norm.query_norm", ("attn.norm_q",), "norm"),
    ("img_attn.norm.key_norm", ("attn.norm_k",), "norm"),
    ("txt_attn.norm.query_norm", ("attn.norm_added_q",), "norm"),
    ("txt_attn.norm.key_norm", ("attn.norm_added_k",), "norm"),
    ("img_mlp.0", ("ff.net.0.proj",), "plain"),
    ("img_mlp.2", ("ff.net.2",), "plain"),
    ("txt_mlp.0", ("ff_context.net.0.proj",), "plain"),
    ("txt_mlp.2", ("ff_context.net.2",), "plain"),
    ("img_attn.proj", ("attn.to_out.0",), "plain"),
    ("txt_attn.proj", ("attn.to_add_out",), "plain"),
)
SINGLE_MODULES: tuple[Entry, ...] = (
    ("modulation.lin", ("norm.linear",), "plain"),
    ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "fused"),
    ("norm.query_norm", ("attn.norm_q",), "norm"),
    ("norm.key_norm", ("attn.norm_k",), "norm"),
    ("linear2", ("proj_out",), "plain"),
)


def module_map(double_blocks: int, single_blocks: int) -> Iterator[Entry]:
    """Every module of a transformer with that many blocks, with its names in both layouts."""
    yield from GLOBAL_MODULES
    for index in range(double_blocks):
        for bfl, diffusers, how in DOUBLE_MODULES:
            yield f"double_blocks.{index}.{bfl}", tuple(f"transformer_blocks.{index}.{d}" for d in diffusers), how
    for index in range(single_blocks):
        for bfl, diffusers, how in SINGLE_MODULES:
            yield (f"single_blocks.{index}.{bfl}",
                   tuple(f"single_transformer_blocks.{index}.{d}" for d in diffusers), how)


def _params(how: str) -> tuple[tuple[str, str], ...]:
    """(BFL suffix, diffusers suffix) of a module's tensors: RMSNorm scales are `scale` in BFL's code."""
    return (("scale", "weight"),) if how == "norm" else (("weight", "weight"), ("bias", "bias"))


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformer's tensors without ComfyUI's `model.diffusion_model.` prefix (others dropped)."""
    prefix = next((p for p in reversed(FLUX_PREFIXES) if f"{p}img_in.weight" in state), "")
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def block_counts(keys) -> tuple[int, int]:
    """How many double and single blocks a BFL state dict holds."""
    def count(kind: str) -> int:
        found = {int(m[1]) for key in keys if (m := re.match(rf"{kind}\.(\d+)\.", key))}
        return max(found) + 1 if found else 0
    return count("double_blocks"), count("single_blocks")


def bfl_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BFL transformer weights (prefix stripped) -> FluxTransformer2DModel's state dict."""
    width = state["img_in.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    for bfl, diffusers, how in module_map(*block_counts(state)):
        for bfl_suffix, diffusers_suffix in _params(how):
            key = f"{bfl}.{bfl_suffix}"
            if key not in state:
                continue  # guidance_in of a schnell model; the strict load names anything really missing
            tensor = state[key]
            if how == "fused":
                rest = tensor.shape[0] - width * (len(diffusers) - 1)
                sizes = [width] * (len(diffusers) - 1) + [rest]  # qkv: three equal parts; linear1 adds the MLP
                pieces = torch.split(tensor, sizes, dim=0)
            else:
                pieces = (_swap_halves(tensor) if how == "swap" else tensor,)
            out.update({f"{name}.{diffusers_suffix}": piece for name, piece in zip(diffusers, pieces, strict=True)})
    return out


def diffusers_to_bfl(state: dict[str, torch.Tensor], double_blocks: int, single_blocks: int) -> dict[str, torch.Tensor]:
    """FluxTransformer2DModel's state dict -> BFL's layout (what flux1-dev.safetensors holds)."""
    out: dict[str, torch.Tensor] = {}
    for bfl, diffusers, how in module_map(double_blocks, single_blocks):
        for bfl_suffix, diffusers_suffix in _params(how):
            keys = [f"{name}.{diffusers_suffix}" for name in diffusers]
            if not all(key in state for key in keys):
                continue
            tensor = torch.cat([state[key] for key in keys], dim=0)
            out[f"{bfl}.{bfl_suffix}"] = _swap_halves(tensor) if how == "swap" else tensor
    return out
