"""Which layers of a Flux.1 transformer an adapter trains, and how the saved file names them.

Blocks are chosen in Flux's own terms: `D{n}` is the reference code's `double_blocks.n` (diffusers'
`transformer_blocks.n`), `S{n}` its `single_blocks.n` (`single_transformer_blocks.n`). As kohya's
Flux LoRAs, every Linear inside a selected block is adapted (attention, MLP, modulation).

Saved names are diffusers' (`transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight`, with
`.alpha`): the one layout that diffusers' `FluxPipeline.load_lora_weights` reads at any model width (its
kohya reader hard-codes FLUX.1's 3072 when it splits the fused `linear1`) and that ComfyUI and Forge read
too (their Flux key maps include diffusers' `transformer.` names with `.alpha`; ai-toolkit's LoRAs are
saved so). Block BASE adds CLIP-L's attention and MLP layers as `text_encoder.text_model.encoder...`, the names
diffusers' loader and ComfyUI's diffusers-LoRA key map give CLIP-L. LoHa/LoKr modules keep LyCORIS's suffixes on
the same names, which ComfyUI reads.
"""

from __future__ import annotations

from torch import nn

from traintrain.choices import TEXT_ENCODER_BLOCK, UNET_BLOCK_IDS, NetworkElement
from traintrain.errors import UserError
from traintrain.networks.targeting import Target

KEY_PREFIX = "transformer."
ATTENTION_PREFIXES = ("attn.", "attn2.", "attention.")  # Flux / SD3, SD3.5's second attention, Z-Image
BLOCK_CONTAINERS = {"FluxTransformerBlock": "D", "FluxSingleTransformerBlock": "S"}
# The CLIP-L text encoder's LoRA (block BASE) in diffusers' names, as FluxLoraLoaderMixin reads them:
# `text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight` (T5 is never trained).
TEXT_ENCODER_PREFIXES = ("text_encoder",)
# kohya's LoRA suffixes -> diffusers/PEFT's, for the modules whose file names differ (LoRA's two factors).
SAVED_SUFFIXES = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}


def flux_block_ids(transformer) -> tuple[str, ...]:
    config = transformer.config
    return tuple([f"D{i:02d}" for i in range(config.num_layers)] +
                 [f"S{i:02d}" for i in range(config.num_single_layers)])


def resolve_flux_blocks(selected: list[str], transformer) -> list[str]:
    return resolve_transformer_blocks(selected, flux_block_ids(transformer), "Flux")


def resolve_transformer_blocks(selected: list[str], valid: tuple[str, ...], model: str) -> list[str]:
    """The transformer blocks to train. Every UNet id selected (the default and the presets) means every
    block; ids this transformer lacks are refused, naming the ones it has."""
    if set(UNET_BLOCK_IDS) <= set(selected):
        return list(valid)
    unknown = [b for b in selected if b != TEXT_ENCODER_BLOCK and b not in valid]
    if unknown:
        raise UserError(f"{', '.join(unknown)} do not exist in this {model} model",
                        f"choose among its blocks: {', '.join(valid)}", field="network_blocks")
    return [b for b in selected if b != TEXT_ENCODER_BLOCK]


def flux_targets(transformer, *, blocks: list[str], element: NetworkElement) -> list[Target]:
    return linear_targets(transformer, BLOCK_CONTAINERS, blocks=blocks, element=element, model="Flux")


def linear_targets(transformer, containers: dict[str, str], *, blocks: list[str], element: NetworkElement,
                   model: str, by_list: bool = False) -> list[Target]:
    """Linear layers of the selected blocks (`containers`: block class name -> id letter, or with `by_list` the
    name of the ModuleList holding the blocks -> id letter), in module order; `element` SelfAttention keeps the
    attention layers (the attention is joint over text and image: `attn.`, SD3.5's second image attention
    `attn2.`, Z-Image's `attention.`); CrossAttention has nothing to select."""
    if element.cross_attention_only:
        raise UserError(f"{element.value}: {model} has no cross-attention (text and image attend jointly)",
                        "use Full, or SelfAttention for the attention layers", field="network_element")
    targets = []
    for path, container in transformer.named_modules():
        kind = containers.get(path.rpartition(".")[0] if by_list else type(container).__name__)
        if kind is None:
            continue
        block = f"{kind}{int(path.rsplit('.', 1)[-1]):02d}"  # transformer_blocks.N / single_transformer_blocks.N
        if block not in blocks:
            continue
        for child_name, child in container.named_modules():
            if not isinstance(child, nn.Linear):
                continue
            if element is NetworkElement.SELF_ATTENTION and not child_name.startswith(ATTENTION_PREFIXES):
                continue
            targets.append(Target(f"{KEY_PREFIX}{path}.{child_name}", child, block, False))
    return targets
