"""`traintrain inspect`: family, network type, ranks, blocks and metadata of a LoRA file."""

import json

import pytest
import torch
from safetensors.torch import save_file

from helpers import tiny_components
from traintrain.cli import main
from traintrain.models.families import SPECS, Family
from traintrain.networks.inspect import block_of
from traintrain.networks.kohya_format import save_lora
from traintrain.networks.network import AdapterNetwork, NetworkSpec


def saved(tmp_path, family, metadata=None, **spec):
    network = AdapterNetwork(tiny_components(family), NetworkSpec(**spec))
    path = tmp_path / f"{family.value}.safetensors"
    save_lora(path, network.tensors_for_save(torch.float16), metadata or {})
    return path, network


def run(capsys, *args):
    code = main(["inspect", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_c3lier_file_shows_rank_per_module_where_they_differ(tmp_path, capsys):
    meta = {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1", "ss_network_dim": "4"}
    path, network = saved(tmp_path, Family.SD1, meta, network_type="c3lier", rank=4, alpha=2, conv_rank=2, conv_alpha=1,
                          blocks=["BASE", "IN01", "IN03", "OUT11"])
    code, out, _ = run(capsys, path)
    assert code == 0
    assert "family: sd1" in out and "network: c3lier (networks.lora)" in out
    text = len(network.text_encoder_modules)
    assert f"modules: {len(network.all_modules)} (UNet {len(network.unet_modules)}, text encoder {text})" in out
    assert "rank/alpha: 4/2 (" in out and "2/1 (" in out
    assert "  lora_unet_down_blocks_0_downsamplers_0_conv: 2/1" in out
    assert "blocks: BASE, IN01, IN03, OUT11" in out and "  ss_network_dim: 4" in out


def test_sdxl_lokr_json_without_metadata(tmp_path, capsys):
    path, network = saved(tmp_path, Family.SDXL, network_type="lokr", rank=2, alpha=1, blocks=["IN04", "M00"])
    code, out, _ = run(capsys, path, "--json")
    data = json.loads(out)
    assert code == 0 and data["family"] == "sdxl" and data["network_type"] == "lokr"
    assert data["network_module"] == "lycoris.kohya" and data["blocks"] == ["IN04", "M00"]
    assert data["module_count"] == len(network.all_modules) and data["text_encoder_modules"] == 0
    assert data["metadata"] == {} and len(data["modules"]) == data["module_count"]


def test_loha_single_rank(tmp_path, capsys):
    path, _ = saved(tmp_path, Family.SD2, {"ss_base_model_version": "sd_v2"}, network_type="loha", rank=4, alpha=4, conv_rank=4,
                    blocks=["OUT03"])
    code, out, _ = run(capsys, path)
    assert "family: sd2" in out and "network: loha (lycoris.kohya)" in out
    assert "rank/alpha: 4/4\n" in out and "blocks: OUT03" in out


@pytest.mark.parametrize("width, family", [(768, "sd1"), (1024, "sd2")])
def test_family_from_text_encoder_width_when_metadata_is_missing(tmp_path, capsys, width, family):
    stem = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    path = tmp_path / "bare.safetensors"
    save_file({f"{stem}.lora_down.weight": torch.zeros(4, width), f"{stem}.lora_up.weight": torch.zeros(width, 4)}, str(path))
    _, out, _ = run(capsys, path)
    assert f"family: {family}" in out and "rank/alpha: 4/4" in out and "metadata: none" in out


def test_block_ids_from_both_namings():
    assert block_of("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") == "IN04"
    assert block_of("lora_unet_middle_block_1_proj_in") == "M00"
    assert block_of("lora_unet_output_blocks_8_0_in_layers_2") == "OUT08"
    assert block_of("lora_unet_down_blocks_1_attentions_1_proj_in") == "IN05"
    assert block_of("lora_unet_up_blocks_3_attentions_2_proj_out") == "OUT11"
    assert block_of("lora_unet_mid_block_resnets_0_conv1") == "M00"
    assert block_of("lora_te2_text_model_encoder_layers_0_mlp_fc1") == "BASE"


def test_not_a_lora_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(1)}, str(path))
    code, _, err = run(capsys, path)
    assert code == 2 and "no LoRA modules" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, tmp_path / "missing.safetensors")
    assert code == 2 and "not found" in err


@pytest.mark.parametrize("family, network_type, blocks, wanted_blocks", [
    (Family.FLUX, "lierla", ["BASE", "D00", "S00"], ["BASE", "D00", "S00"]),
    (Family.SD3, "loha", ["J01"], ["J01"]),
    (Family.ZIMAGE, "lokr", ["C00", "L01"], ["C00", "L01"]),
])
@pytest.mark.parametrize("with_metadata", [True, False])
def test_transformer_family_files_in_diffusers_layout(tmp_path, capsys, family, network_type, blocks, wanted_blocks,
                                                      with_metadata):
    from transformer_family_helpers import frozen_tiny

    network = AdapterNetwork(frozen_tiny(family), NetworkSpec(network_type=network_type, rank=2, alpha=1,
                                                              blocks=blocks))
    tensors = network.tensors_for_save(torch.float16)
    assert all(key.startswith(("transformer.", "text_encoder")) for key in tensors)  # what we save for them
    path = tmp_path / f"{family.value}.safetensors"
    save_lora(path, tensors, {"ss_base_model_version": SPECS[family].base_model_version} if with_metadata else {})
    code, out, _ = run(capsys, path, "--json")
    data = json.loads(out)
    known = with_metadata or family is not Family.SD3  # bare SD3 keys are Flux's double blocks' names
    assert code == 0 and data["family"] == (family.value if known else "unknown")
    assert data["network_type"] == network_type and data["module_count"] == len(network.all_modules)
    assert data["text_encoder_modules"] == len(network.text_encoder_modules)
    assert data["blocks"] == (wanted_blocks if known else ["BASE"] * ("BASE" in blocks))
    assert {m["rank"] for m in data["modules"].values()} <= {2, None}
    code, out, _ = run(capsys, path)
    assert f"(transformer {len(network.unet_modules)}, text encoder" in out or not known
