"""The saved file, loaded by diffusers' own load_lora_weights, must give our network's outputs."""

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from helpers import clone_components, randomize_network, tiny_components, unet_inputs
from traintrain.config import ALL_BLOCK_IDS
from traintrain.models.families import NOISE_SCHEDULE
from traintrain.networks.kohya_format import save_lora
from traintrain.networks.network import AdapterNetwork, NetworkSpec


def pipeline(components):
    return StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoders[0], tokenizer=components.tokenizers[0],
        unet=components.unet, scheduler=DDIMScheduler(**NOISE_SCHEDULE, clip_sample=False), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def outputs(components):
    latents, t, hidden = unet_inputs(components)
    ids = components.tokenizers[0]("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        unet = components.unet(latents, t, encoder_hidden_states=hidden).sample
        text = components.text_encoders[0](ids).last_hidden_state
    return unet, text


def check_diffusers_matches(tmp_path, network_type):
    ours = tiny_components()
    theirs = clone_components(ours)
    base_unet, base_text = outputs(ours)
    spec = NetworkSpec(network_type=network_type, rank=4, alpha=2, conv_rank=2, conv_alpha=3, blocks=list(ALL_BLOCK_IDS))
    network = randomize_network(AdapterNetwork(ours, spec)).apply()
    our_unet, our_text = outputs(ours)
    assert (our_unet - base_unet).abs().max() > 1e-3 and (our_text - base_text).abs().max() > 1e-3

    path = tmp_path / "lora.safetensors"
    save_lora(path, network.tensors_for_save(torch.float32), {"ss_network_module": "networks.lora"})
    pipe = pipeline(theirs)
    pipe.load_lora_weights(str(tmp_path), weight_name=path.name, adapter_name="t")
    their_unet, their_text = outputs(theirs)
    assert (their_unet - our_unet).abs().max() < 1e-4
    assert (their_text - our_text).abs().max() < 1e-4


def test_lierla_file_loads_in_diffusers_with_same_outputs(tmp_path):
    check_diffusers_matches(tmp_path, "lierla")


def test_c3lier_file_loads_in_diffusers_with_same_outputs(tmp_path):
    check_diffusers_matches(tmp_path, "c3lier")
