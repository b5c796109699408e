"""kohya names SDXL UNet modules in the original (SGM) layout, not diffusers'.

kohya trains SDXL on its own copy of Stability's UNet, so its files say
`input_blocks_4_1_transformer_blocks_0_attn1_to_q` where diffusers says
`down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`. The mapping is the one the
single-file writer already uses for checkpoint weights, so both stay in step.
"""

from __future__ import annotations

from traintrain.models.ldm_convert import UNET_PREFIX, unet_to_ldm


def sgm_module_paths(paths: list[str], unet_config) -> dict[str, str]:
    """diffusers module path -> SGM module path, for modules of a UNet with this config."""
    renamed = unet_to_ldm({f"{path}.weight": path for path in paths}, unet_config)
    return {path: key[len(UNET_PREFIX) : -len(".weight")] for key, path in renamed.items()}
