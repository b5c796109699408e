"""diffusers -> LDM conversion, checked against diffusers' own LDM -> diffusers converters.

Real-size models are built on the meta device (shapes, no memory), so the full SD1.5, SD2.1 and
SDXL layouts are checked without any weights.
"""

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

from traintrain.models.assembly import TEXT_ENCODER_FOLDERS, build_text_encoder, config_template
from traintrain.models.components import ModelComponents
from traintrain.models.families import SD_FAMILIES, Family, detect_family_from_ldm_keys
from traintrain.models.ldm_convert import components_to_ldm, open_clip_to_ldm
from traintrain.models.tiny import build_tiny_components

# Weights whose LDM name and shape we know from the real released checkpoints.
REAL_KEYS = {
    Family.SD1: {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
    },
    Family.SD2: {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),
        "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight": (3072, 1024),
        "cond_stage_model.model.text_projection": (1024, 1024),
        "cond_stage_model.model.positional_embedding": (77, 1024),
    },
    Family.SDXL: {
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
    },
}
# Key counts of the released checkpoints' model parts, less `position_ids` and `logit_scale`.
REAL_KEY_COUNTS = {Family.SD1: 1130, Family.SD2: 1227, Family.SDXL: 2513}


def real_size_on_meta(family):
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config_template(family, "unet"))
        vae = AutoencoderKL.from_config(config_template(family, "vae"))
        folders = TEXT_ENCODER_FOLDERS[: 2 if family is Family.SDXL else 1]
        encoders = [build_text_encoder(config_template(family, folder)) for folder in folders]
    return ModelComponents(family, unet, vae, encoders, [])


@pytest.mark.parametrize("family", SD_FAMILIES)
def test_real_layout_names_and_shapes(family):
    components = real_size_on_meta(family)
    state = components_to_ldm(components)
    assert len(state) == REAL_KEY_COUNTS[family]
    assert detect_family_from_ldm_keys(state) is family
    assert {key: tuple(state[key].shape) for key in REAL_KEYS[family]} == REAL_KEYS[family]


@pytest.mark.parametrize("family", SD_FAMILIES)
def test_diffusers_converters_invert_ours(family):
    """Every UNet and VAE weight comes back under its own name and shape through diffusers' code."""
    components = real_size_on_meta(family)
    state = components_to_ldm(components)
    for model, convert in ((components.unet, convert_ldm_unet_checkpoint), (components.vae, convert_ldm_vae_checkpoint)):
        back = convert(state, dict(model.config))
        assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_open_clip_fuses_q_k_v_in_order():
    encoder = build_tiny_components(Family.SD2).text_encoders[0]
    weights = encoder.state_dict()
    state = open_clip_to_ldm(weights, "m.", add_unused_last_layer=True)
    fused = state["m.transformer.resblocks.0.attn.in_proj_weight"]
    expected = torch.cat([weights[f"encoder.layers.0.self_attn.{p}_proj.weight"] for p in "qkv"])
    assert torch.equal(fused, expected)
    # The unused extra layer copies the last one and shares no storage (safetensors refuses that).
    last, extra = "m.transformer.resblocks.1.mlp.c_fc.weight", "m.transformer.resblocks.2.mlp.c_fc.weight"
    assert torch.equal(state[last], state[extra]) and state[last].data_ptr() != state[extra].data_ptr()
    assert torch.equal(state["m.text_projection"], torch.eye(64))


def test_vae_attention_becomes_1x1_conv_with_same_values():
    components = build_tiny_components(Family.SD1)
    state = components_to_ldm(components)
    linear = components.vae.state_dict()["decoder.mid_block.attentions.0.to_out.0.weight"]
    conv = state["first_stage_model.decoder.mid.attn_1.proj_out.weight"]
    assert conv.shape == (*linear.shape, 1, 1) and torch.equal(conv[:, :, 0, 0], linear)
