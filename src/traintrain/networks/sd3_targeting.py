"""Which layers of an SD3 / SD3.5 transformer an adapter trains, and how the saved file names them.

Blocks are chosen in SD3's own terms: `J{n}` is the reference code's `joint_blocks.n` (diffusers'
`transformer_blocks.n`). Every Linear inside a selected block is adapted (both streams' attention
projections, MLPs and modulations, and SD3.5 Medium's second attention), as kohya's SD3 LoRAs do.

Saved names are diffusers' (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`) with alpha / rank
multiplied into the factors and no `.alpha` keys (which the loader refuses):
`StableDiffusion3Pipeline.load_lora_weights` reads them, and ComfyUI's SD3 key map (`comfy/lora.py`
model_lora_keys_unet for SD3) maps diffusers' `transformer.transformer_blocks.N.*` names to its MMDiT, the
same way it reads Flux's. Block BASE adds the CLIP-L and CLIP-G attention and MLP layers as
`text_encoder.text_model.encoder...` and `text_encoder_2.text_model.encoder...`, alpha folded in as for the rest.
"""

from __future__ import annotations

from traintrain.choices import NetworkElement
from traintrain.networks.flux_targeting import linear_targets, resolve_transformer_blocks
from traintrain.networks.targeting import Target

BLOCK_CONTAINERS = {"JointTransformerBlock": "J"}
# CLIP-L's and CLIP-G's LoRA (block BASE) in diffusers' names, as SD3LoraLoaderMixin reads them (T5 is never trained).
TEXT_ENCODER_PREFIXES = ("text_encoder", "text_encoder_2")


def sd3_block_ids(transformer) -> tuple[str, ...]:
    return tuple(f"J{i:02d}" for i in range(transformer.config.num_layers))


def resolve_sd3_blocks(selected: list[str], transformer) -> list[str]:
    return resolve_transformer_blocks(selected, sd3_block_ids(transformer), "SD3")


def sd3_targets(transformer, *, blocks: list[str], element: NetworkElement) -> list[Target]:
    return linear_targets(transformer, BLOCK_CONTAINERS, blocks=blocks, element=element, model="SD3")
