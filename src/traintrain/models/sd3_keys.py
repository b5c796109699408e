"""SD3 / SD3.5 transformer weights: Stability AI's single-file MMDiT layout <-> diffusers' SD3Transformer2DModel.

Reading uses diffusers' own converter (`convert_sd3_transformer_checkpoint_to_diffusers`): it takes every
dimension from the tensors, so it reads any width, our tiny test models included. diffusers has no reverse;
`diffusers_to_sd3` writes the reference layout (what sd3_medium.safetensors holds) for the tiny single files,
and tests check that diffusers' converter reads it back to the very same tensors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch

Entry = tuple[str, tuple[str, ...], str]  # (reference module, diffusers module(s), how: plain / fused / swap / norm)

GLOBAL_MODULES: tuple[Entry, ...] = (
    ("x_embedder.proj", ("pos_embed.proj",), "plain"),
    ("t_embedder.mlp.0", ("time_text_embed.timestep_embedder.linear_1",), "plain"),
    ("t_embedder.mlp.2", ("time_text_embed.timestep_embedder.linear_2",), "plain"),
    ("y_embedder.mlp.0", ("time_text_embed.text_embedder.linear_1",), "plain"),
    ("y_embedder.mlp.2", ("time_text_embed.text_embedder.linear_2",), "plain"),
    ("context_embedder", ("context_embedder",), "plain"),
    ("final_layer.linear", ("proj_out",), "plain"),
    # the reference's final modulation yields (shift, scale), diffusers' AdaLayerNormContinuous (scale, shift)
    ("final_layer.adaLN_modulation.1", ("norm_out.linear",), "swap"),
)
# Every joint block: the image stream (x_block) and the text stream (context_block).
BLOCK_MODULES: tuple[Entry, ...] = (
    ("x_block.attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v"), "fused"),
    ("context_block.attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "fused"),
    ("x_block.attn.ln_q", ("attn.norm_q",), "norm"),
    ("x_block.attn.ln_k", ("attn.norm_k",), "norm"),
    ("context_block.attn.ln_q", ("attn.norm_added_q",), "norm"),
    ("context_block.attn.ln_k", ("attn.norm_added_k",), "norm"),
    ("x_block.attn.proj", ("attn.to_out.0",), "plain"),
    ("x_block.adaLN_modulation.1", ("norm1.linear",), "plain"),
    ("x_block.mlp.fc1", ("ff.net.0.proj",), "plain"),
    ("x_block.mlp.fc2", ("ff.net.2",), "plain"),
    # SD3.5 Medium's second image self-attention in its first blocks
    ("x_block.attn2.qkv", ("attn2.to_q", "attn2.to_k", "attn2.to_v"), "fused"),
    ("x_block.attn2.ln_q", ("attn2.norm_q",), "norm"),
    ("x_block.attn2.ln_k", ("attn2.norm_k",), "norm"),
    ("x_block.attn2.proj", ("attn2.to_out.0",), "plain"),
)
# Not in the last block, whose text stream only feeds the image stream (context_pre_only)...
CONTEXT_MODULES: tuple[Entry, ...] = (
    ("context_block.attn.proj", ("attn.to_add_out",), "plain"),
    ("context_block.adaLN_modulation.1", ("norm1_context.linear",), "plain"),
    ("context_block.mlp.fc1", ("ff_context.net.0.proj",), "plain"),
    ("context_block.mlp.fc2", ("ff_context.net.2",), "plain"),
)
# ... where the text stream's modulation is a continuous AdaLayerNorm (shift, scale) instead.
LAST_CONTEXT_MODULES: tuple[Entry, ...] = (("context_block.adaLN_modulation.1", ("norm1_context.linear",), "swap"),)


def module_map(num_layers: int) -> Iterator[Entry]:
    """Every module of an MMDiT with that many joint blocks, with its names in both layouts."""
    yield from GLOBAL_MODULES
    for index in range(num_layers):
        context = LAST_CONTEXT_MODULES if index == num_layers - 1 else CONTEXT_MODULES
        for reference, diffusers, how in BLOCK_MODULES + context:
            yield f"joint_blocks.{index}.{reference}", tuple(f"transformer_blocks.{index}.{d}" for d in diffusers), how


def joint_block_count(keys) -> int:
    found = {int(m[1]) for key in keys if (m := re.match(r"(?:model\.diffusion_model\.)?joint_blocks\.(\d+)\.", key))}
    return max(found) + 1 if found else 0


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def diffusers_to_sd3(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """SD3Transformer2DModel's state dict -> the reference MMDiT layout (without the `model.diffusion_model.`
    prefix). Modules the model lacks (q/k norms of SD3.0, attn2 outside SD3.5 Medium's first blocks) are skipped."""
    out = {"pos_embed": state["pos_embed.pos_embed"]}
    for reference, diffusers, how in module_map(num_layers):
        suffixes = ("weight",) if how == "norm" else ("weight", "bias")
        for suffix in suffixes:
            keys = [f"{name}.{suffix}" for name in diffusers]
            if not all(key in state for key in keys):
                continue
            tensor = torch.cat([state[key] for key in keys], dim=0)
            out[f"{reference}.{suffix}"] = _swap_halves(tensor) if how == "swap" else tensor
    return out
