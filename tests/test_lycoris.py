"""LoHa and LoKr files, loaded by lycoris-lora's own loader, must give our network's outputs."""

import pytest
import torch
from lycoris import create_lycoris_from_weights
from safetensors.torch import load_file

from helpers import clone_components, tiny_components
from test_interop_diffusers import largest_difference, outputs
from traintrain.config import ALL_BLOCK_IDS
from traintrain.models.families import Family
from traintrain.networks.kohya_format import save_lora
from traintrain.networks.lokr import LoKrModule
from traintrain.networks.network import AdapterNetwork, NetworkSpec


def randomize_all(network, seed=1, scale=0.2):
    """Random values in every saved factor, so the update is non-zero everywhere."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.all_modules:
            for suffix, tensor in module.saved_tensors().items():
                if suffix != "alpha":
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
    return network


@pytest.mark.parametrize("network_type", ["loha", "lokr"])
@pytest.mark.parametrize("family", [Family.SD1, Family.SD2, Family.SDXL])
def test_lycoris_loader_gives_same_outputs(tmp_path, family, network_type):
    ours = tiny_components(family)
    theirs = clone_components(ours)
    base_unet, _ = outputs(ours)
    spec = NetworkSpec(network_type=network_type, rank=2, alpha=3, conv_rank=4, conv_alpha=2, blocks=list(ALL_BLOCK_IDS))
    network = randomize_all(AdapterNetwork(ours, spec)).apply()
    our_unet, our_texts = outputs(ours)
    assert (our_unet - base_unet).abs().max() > 1e-3

    path = tmp_path / "lyco.safetensors"
    save_lora(path, network.tensors_for_save(torch.float32), {"ss_network_module": "lycoris.kohya"})
    saved = load_file(str(path))
    our_parts = [ours.unet, *ours.text_encoders]
    their_parts = [theirs.unet, *theirs.text_encoders]
    loaded = 0
    for our_part, their_part in zip(our_parts, their_parts):
        paths = {id(layer): name for name, layer in our_part.named_modules()}
        weights = {}
        for module in network.all_modules:
            name = paths.get(id(module.org_module[0]))
            if name is not None:
                stem = "lycoris_" + name.replace(".", "_")
                weights |= {f"{stem}.{suffix}": saved[f"{module.lora_name}.{suffix}"] for suffix in module.saved_tensors()}
        lycoris_net, _ = create_lycoris_from_weights(1.0, None, their_part, weights_sd=weights)
        lycoris_net.apply_to()
        loaded += len(lycoris_net.loras)
    assert loaded == len(network.all_modules)
    their_unet, their_texts = outputs(theirs)
    assert (their_unet - our_unet).abs().max() < 1e-4
    assert largest_difference(their_texts, our_texts) < 1e-4


def test_lokr_uses_full_w2_when_rank_is_large_and_decomposes_otherwise():
    linear = torch.nn.Linear(32, 64)  # out 64 = 8 x 8, in 32 = 4 x 8
    small = LoKrModule("x", linear, rank=2, alpha=1)
    large = LoKrModule("x", linear, rank=4, alpha=1)
    assert set(small.saved_tensors()) == {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"}
    assert small.lokr_w1.shape == (8, 4) and small.lokr_w2_a.shape == (8, 2) and small.lokr_w2_b.shape == (2, 8)
    assert set(large.saved_tensors()) == {"lokr_w1", "lokr_w2", "alpha"} and float(large.alpha) == 4


@pytest.mark.parametrize("network_type", ["loha", "lokr"])
def test_untrained_lycoris_network_changes_nothing_and_metadata_names_the_algorithm(network_type):
    components = tiny_components()
    before, _ = outputs(components)
    spec = NetworkSpec(network_type=network_type, rank=4, alpha=2, blocks=list(ALL_BLOCK_IDS))
    network = AdapterNetwork(components, spec).apply()
    after, _ = outputs(components)
    assert torch.equal(after, before)
    assert spec.network_args["algo"] == network_type
    assert any(m.is_conv and m.org_module[0].kernel_size == (3, 3) for m in network.unet_modules)


@pytest.mark.parametrize("network_type", ["loha", "lokr"])
def test_strength_scales_the_whole_update(network_type):
    components = tiny_components()
    spec = NetworkSpec(network_type=network_type, rank=2, alpha=2, blocks=["IN01"])
    network = randomize_all(AdapterNetwork(components, spec))
    module = network.all_modules[0]
    single = module.delta_weight()
    strong = network.tensors_for_save(torch.float32, strength=3.0)
    copy = randomize_all(AdapterNetwork(tiny_components(), spec), seed=9)
    copy.load_tensors(strong)
    assert torch.allclose(copy.all_modules[0].delta_weight(), 3 * single, atol=1e-6)
