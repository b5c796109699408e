"""The saved file, loaded by diffusers' own load_lora_weights, must give our network's outputs."""

import pytest
import torch

from helpers import clone_components, randomize_network, tiny_components, unet_inputs
from traintrain.config import ALL_BLOCK_IDS
from traintrain.models.encoding import Conditioning
from traintrain.models.families import Family
from traintrain.modes.denoising import unet_predict
from traintrain.networks.kohya_format import save_lora
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from traintrain.rendering import pipeline_from_components


def outputs(components):
    """UNet output (with SDXL's pooled text and time_ids) and every text encoder's hidden states."""
    latents, t, hidden = unet_inputs(components)
    pooled = None
    if components.family == Family.SDXL:
        pooled = torch.randn(1, components.text_encoders[1].config.projection_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        unet = unet_predict(components, latents, t, Conditioning(hidden, pooled))
        texts = []
        for tokenizer, encoder in zip(components.tokenizers, components.text_encoders):
            ids = tokenizer("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
            texts.append(encoder(ids).last_hidden_state)
    return unet, texts


def largest_difference(first, second) -> float:
    return max((a - b).abs().max().item() for a, b in zip(first, second))


@pytest.mark.parametrize("network_type", ["lierla", "c3lier"])
@pytest.mark.parametrize("family", [Family.SD1, Family.SD2, Family.SDXL])
def test_file_loads_in_diffusers_with_same_outputs(tmp_path, family, network_type):
    ours = tiny_components(family)
    theirs = clone_components(ours)
    base_unet, base_texts = outputs(ours)
    spec = NetworkSpec(network_type=network_type, rank=4, alpha=2, conv_rank=2, conv_alpha=3, blocks=list(ALL_BLOCK_IDS))
    network = randomize_network(AdapterNetwork(ours, spec)).apply()
    our_unet, our_texts = outputs(ours)
    assert (our_unet - base_unet).abs().max() > 1e-3
    assert all((ours_ - base).abs().max() > 1e-3 for ours_, base in zip(our_texts, base_texts))

    path = tmp_path / "lora.safetensors"
    tensors = network.tensors_for_save(torch.float32)
    if family == Family.SDXL:  # kohya's SGM layout and per-encoder prefixes
        assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in tensors
        assert any(k.startswith("lora_te2_text_model_encoder_layers_1_") for k in tensors)
    save_lora(path, tensors, {"ss_network_module": "networks.lora"})
    pipe = pipeline_from_components(theirs)
    pipe.load_lora_weights(str(tmp_path), weight_name=path.name, adapter_name="t")
    their_unet, their_texts = outputs(theirs)
    assert (their_unet - our_unet).abs().max() < 1e-4
    assert largest_difference(their_texts, our_texts) < 1e-4
