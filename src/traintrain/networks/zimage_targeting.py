"""Which layers of a Z-Image transformer an adapter trains, and how the saved file names them.

Blocks are chosen in Z-Image's own terms: `L{n}` is the main stack's `layers.n` (30 in Z-Image-Turbo),
`N{n}` the noise refiner's `noise_refiner.n` and `C{n}` the context refiner's `context_refiner.n` (2 each), as
the reference code and diffusers name them. Every Linear inside a selected block is adapted (attention
projections, the SwiGLU feed-forward, the modulation), as musubi-tuner's and ai-toolkit's Z-Image LoRAs do.

Saved names are diffusers' (`transformer.layers.0.attention.to_q.lora_A.weight`) with alpha / rank multiplied
into the factors and no `.alpha` keys: ZImagePipeline.load_lora_weights reads that as it is (with `.alpha` keys
it would run its kohya converter, which prefixes `transformer.` a second time).
"""

from __future__ import annotations

from traintrain.choices import NetworkElement
from traintrain.networks.flux_targeting import linear_targets, resolve_transformer_blocks
from traintrain.networks.targeting import Target

# The three ModuleLists of ZImageTransformerBlock (the same class in all three) -> block id letter.
STACKS = {"layers": "L", "noise_refiner": "N", "context_refiner": "C"}


def zimage_block_ids(transformer) -> tuple[str, ...]:
    config = transformer.config
    return tuple([f"L{i:02d}" for i in range(config.n_layers)] + [
        f"{letter}{i:02d}" for letter in "NC" for i in range(config.n_refiner_layers)])


def resolve_zimage_blocks(selected: list[str], transformer) -> list[str]:
    return resolve_transformer_blocks(selected, zimage_block_ids(transformer), "Z-Image")


def zimage_targets(transformer, *, blocks: list[str], element: NetworkElement) -> list[Target]:
    return linear_targets(transformer, STACKS, blocks=blocks, element=element, model="Z-Image", by_list=True)
