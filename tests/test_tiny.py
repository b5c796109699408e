"""Tiny random models: each family's real block layout at toy widths, written in both formats."""

import json

import pytest
import torch

from traintrain.errors import UserError
from traintrain.models.families import SD_FAMILIES, Family
from traintrain.models.ldm_convert import components_to_ldm
from traintrain.models.tiny import build_tiny_components, write_tiny_model


def block_ids(state, kind):
    return {int(key.split(".")[3]) for key in state if key.startswith(f"model.diffusion_model.{kind}.")}


def encode(components, prompt="a photo of the cat"):
    """Hidden states of every text encoder for one prompt, as training will compute them."""
    outputs = []
    for tokenizer, encoder in zip(components.tokenizers, components.text_encoders):
        ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        outputs.append(encoder(ids, output_hidden_states=True))
    return outputs


def test_sd1_has_the_a1111_blocks_and_stays_small():
    components = build_tiny_components(Family.SD1)
    state = components_to_ldm(components)
    assert block_ids(state, "input_blocks") == set(range(12))  # IN00-IN11
    assert block_ids(state, "output_blocks") == set(range(12))  # OUT00-OUT11
    assert any(key.startswith("model.diffusion_model.middle_block.1.") for key in state)  # M00 attention
    unet = components.unet
    assert list(unet.config.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert unet.config.cross_attention_dim == components.text_encoders[0].config.hidden_size == 64
    assert sum(p.numel() for model in (unet, components.vae, *components.text_encoders) for p in model.parameters()) < 3.5e6


@pytest.mark.parametrize("family", SD_FAMILIES)
def test_tiny_model_runs_end_to_end(family):
    """Text -> UNet at 16x16 latents, and the VAE's factor-8 round trip."""
    components = build_tiny_components(family)
    outputs = encode(components)
    context = torch.cat([out.last_hidden_state for out in outputs], dim=-1)
    extra = {}
    if family is Family.SDXL:
        time_ids = torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]])
        extra = {"added_cond_kwargs": {"text_embeds": outputs[1].text_embeds, "time_ids": time_ids}}
    with torch.no_grad():
        noise = components.unet(torch.randn(1, 4, 16, 16), torch.tensor([500]), context, **extra).sample
        latents = components.vae.encode(torch.rand(1, 3, 128, 128) * 2 - 1).latent_dist.sample()
    assert noise.shape == (1, 4, 16, 16) and latents.shape == (1, 4, 16, 16)


def test_sdxl_layout():
    components = build_tiny_components(Family.SDXL)
    config = components.unet.config
    assert list(config.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert config.addition_embed_type == "text_time"
    pooled = components.text_encoders[1].config.projection_dim
    assert config.projection_class_embeddings_input_dim == pooled + 6 * config.addition_time_embed_dim
    assert config.cross_attention_dim == sum(encoder.config.hidden_size for encoder in components.text_encoders)
    state = components_to_ldm(components)
    assert block_ids(state, "input_blocks") == set(range(9)) and block_ids(state, "output_blocks") == set(range(9))


def test_same_seed_same_weights_and_rng_untouched():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = build_tiny_components(Family.SD1, seed=7).unet.state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    second = build_tiny_components(Family.SD1, seed=7).unet.state_dict()
    other = build_tiny_components(Family.SD1, seed=8).unet.state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["conv_in.weight"], other["conv_in.weight"])


def test_single_file_layout(tmp_path):
    out = write_tiny_model(Family.SDXL, "single-file", tmp_path / "tiny.safetensors")
    assert out.is_file()
    for sub in ("tokenizer", "tokenizer_2"):
        assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {p.name for p in (tmp_path / "tiny.tokenizer" / sub).iterdir()}


def test_diffusers_layout(tmp_path):
    out = write_tiny_model(Family.SD1, "diffusers", tmp_path / "tiny")
    assert {p.name for p in out.iterdir()} == {"model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["beta_schedule"] == "scaled_linear"


@pytest.mark.parametrize("fmt,name", [("single-file", "tiny.safetensors"), ("diffusers", "tiny")])
def test_refuses_to_overwrite(tmp_path, fmt, name):
    write_tiny_model(Family.SD1, fmt, tmp_path / name)
    with pytest.raises(UserError, match="already exists"):
        write_tiny_model(Family.SD1, fmt, tmp_path / name)


def test_unknown_format(tmp_path):
    with pytest.raises(UserError, match="single-file, diffusers"):
        write_tiny_model(Family.SD1, "onnx", tmp_path / "x")
