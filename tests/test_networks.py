import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from helpers import no_read_back, randomize_network, tiny_components, unet_inputs
from traintrain.config import ALL_BLOCK_IDS
from traintrain.errors import UserError
from traintrain.models.assembly import build_text_encoder, config_template
from traintrain.models.families import Family
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from traintrain.networks.targeting import block_id_of, text_encoder_targets, unet_block_ids, unet_targets


def spec(**kw):
    base = dict(network_type="lierla", rank=4, alpha=2, blocks=list(ALL_BLOCK_IDS), element="Full")
    base.update(kw)
    return NetworkSpec(**base)


def unet_out(components):
    latents, t, hidden = unet_inputs(components)
    with torch.no_grad():
        return components.unet(latents, t, encoder_hidden_states=hidden).sample


def test_untrained_network_changes_nothing_and_trained_one_does():
    components = tiny_components()
    before = unet_out(components)
    network = AdapterNetwork(components, spec()).apply()
    assert torch.equal(unet_out(components), before)
    randomize_network(network)
    changed = unet_out(components)
    assert (changed - before).abs().max() > 1e-3
    network.set_multiplier(0)
    assert torch.equal(unet_out(components), before)
    network.set_multiplier(1)
    network.remove()
    assert torch.equal(unet_out(components), before)


def test_stacked_networks_add_up_and_remove_in_order():
    components = tiny_components()
    before = unet_out(components)
    first = randomize_network(AdapterNetwork(components, spec()), seed=1).apply()
    only_first = unet_out(components)
    second = randomize_network(AdapterNetwork(components, spec()), seed=2).apply()
    both = unet_out(components)
    assert not torch.allclose(both, only_first)
    second.remove()
    assert torch.equal(unet_out(components), only_first)
    first.remove()
    assert torch.equal(unet_out(components), before)


def test_tiny_sd1_module_counts_match_sd15_layout():
    components = tiny_components()
    network = AdapterNetwork(components, spec())
    assert len(network.unet_modules) == 192
    assert len(network.text_encoder_modules) == 6 * components.text_encoders[0].config.num_hidden_layers


def test_full_size_sd15_counts_match_kohya():
    sd15 = dict(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, layers_per_block=2,
        cross_attention_dim=768, attention_head_dim=8,
    )
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd15)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12))
    assert len(unet_targets(unet, blocks=list(ALL_BLOCK_IDS), element="Full", with_conv_blocks=False)) == 192
    assert len(text_encoder_targets(text, "lora_te")) == 72
    assert unet_block_ids(unet)[-1] == "OUT11"


def test_block_ids_follow_a1111_numbering():
    assert block_id_of("conv_in", 2) == "IN00"
    assert block_id_of("down_blocks.0.attentions.1.proj_in", 2) == "IN02"
    assert block_id_of("down_blocks.0.downsamplers.0.conv", 2) == "IN03"
    assert block_id_of("down_blocks.3.resnets.1.conv1", 2) == "IN11"
    assert block_id_of("mid_block.attentions.0.proj_in", 2) == "M00"
    assert block_id_of("up_blocks.0.upsamplers.0.conv", 2) == "OUT02"
    assert block_id_of("up_blocks.3.attentions.2.proj_out", 2) == "OUT11"


def test_one_block_selects_only_that_block():
    components = tiny_components()
    network = AdapterNetwork(components, spec(blocks=["IN01"]))
    names = [m.lora_name for m in network.all_modules]
    assert names and all(n.startswith("lora_unet_down_blocks_0_attentions_0_") for n in names)


@pytest.mark.parametrize("element, wanted, unwanted", [("CrossAttention", "_attn2_", "_attn1_"), ("SelfAttention", "_attn1_", "_attn2_")])
def test_elements_select_attention_kind(element, wanted, unwanted):
    components = tiny_components()
    network = AdapterNetwork(components, spec(element=element))
    names = [m.lora_name for m in network.all_modules]
    assert len(names) == 16 * 4 and all(wanted in n and unwanted not in n for n in names)


def test_c3lier_adds_conv_blocks_with_conv_rank():
    components = tiny_components()
    network = AdapterNetwork(components, spec(network_type="c3lier", conv_rank=2, conv_alpha=1))
    convs = [m for m in network.unet_modules if isinstance(m.lora_down, torch.nn.Conv2d) and m.lora_down.kernel_size == (3, 3)]
    assert convs and all(m.rank == 2 and float(m.alpha) == 1 for m in convs)
    assert any("_resnets_" in m.lora_name for m in network.unet_modules)
    assert len(network.unet_modules) > 192


def test_unknown_block_for_family_is_rejected():
    components = tiny_components()
    with pytest.raises(UserError, match="OUT12"):
        AdapterNetwork(components, NetworkSpec(blocks=["OUT12"]))


def test_saved_tensors_round_trip_and_strength():
    components = tiny_components()
    network = randomize_network(AdapterNetwork(components, spec()))
    tensors = network.tensors_for_save(torch.float32)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert tensors[f"{key}.lora_down.weight"].shape == (4, 32)
    assert tensors[f"{key}.alpha"].ndim == 0
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in tensors
    other = AdapterNetwork(tiny_components(), spec())
    other.load_tensors(tensors)
    assert all(torch.equal(a, b) for a, b in zip(other.tensors_for_save(torch.float32).values(), tensors.values()))
    strong = network.tensors_for_save(torch.float32, strength=4.0)
    assert torch.allclose(strong[f"{key}.lora_up.weight"], 2 * tensors[f"{key}.lora_up.weight"])
    small = AdapterNetwork(tiny_components(), spec(rank=2))
    with pytest.raises(UserError, match="same rank"):
        small.load_tensors(tensors)


def test_a_file_with_or_without_the_text_encoder_part_names_block_base():
    """Resuming across block BASE (a file trained with the text encoder, or without it) says which way to set it."""
    blocks = spec().blocks
    with_base = AdapterNetwork(tiny_components(), spec()).tensors_for_save(torch.float32)
    without_base = AdapterNetwork(tiny_components(), spec(blocks=[b for b in blocks if b != "BASE"]))
    with pytest.raises(UserError) as caught:
        without_base.load_tensors(with_base)
    assert caught.value.fix == "the file also trains the text encoder: add BASE to network_blocks"
    with pytest.raises(UserError) as caught:
        AdapterNetwork(tiny_components(), spec()).load_tensors(without_base.tensors_for_save(torch.float32))
    assert caught.value.fix == "the file has no text-encoder part: leave BASE out of network_blocks"
    assert caught.value.field == "network_resume"
    other_blocks = AdapterNetwork(tiny_components(), spec(blocks=["BASE", "IN01"]))
    with pytest.raises(UserError) as caught:
        other_blocks.load_tensors(with_base)
    assert caught.value.fix == "use the same model, network type, blocks and element"


def full_size(family):
    """The real architecture of a family, on the meta device (no memory), from the bundled configs."""
    folders = ["text_encoder", "text_encoder_2"] if family is Family.SDXL else ["text_encoder"]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config_template(family, "unet"))
        encoders = [build_text_encoder(config_template(family, folder)) for folder in folders]
    return unet, encoders


# kohya's "create LoRA for Text Encoder / U-Net: N modules" for the real models.
@pytest.mark.parametrize("family, unet_count, text_counts, conv_count", [
    (Family.SD1, 192, [72], 278), (Family.SD2, 192, [138], 278), (Family.SDXL, 722, [72, 192], None),
])
def test_full_size_counts_match_kohya(family, unet_count, text_counts, conv_count):
    unet, encoders = full_size(family)
    sgm = family is Family.SDXL
    blocks = list(ALL_BLOCK_IDS) if not sgm else ["BASE"] + list(unet_block_ids(unet))
    assert len(unet_targets(unet, blocks=blocks, element="Full", with_conv_blocks=False, sgm_names=sgm)) == unet_count
    assert [len(text_encoder_targets(e, "lora_te")) for e in encoders] == text_counts
    if conv_count:
        assert len(unet_targets(unet, blocks=blocks, element="Full", with_conv_blocks=True)) == conv_count


def test_sdxl_block_ids_and_kohya_sgm_names():
    unet, _ = full_size(Family.SDXL)
    assert unet_block_ids(unet) == tuple([f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)])
    names = {t.lora_name for t in unet_targets(unet, blocks=["IN04", "M00", "OUT02"], element="Full", with_conv_blocks=True, sgm_names=True)}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    assert "lora_unet_input_blocks_4_0_in_layers_2" in names and "lora_unet_input_blocks_4_0_skip_connection" in names
    assert "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2" in names
    assert "lora_unet_output_blocks_2_2_conv" in names and "lora_unet_output_blocks_2_0_emb_layers_1" in names


@pytest.mark.parametrize("network_type", ["lierla", "c3lier"])
@pytest.mark.parametrize("block, prefix", [("IN04", "lora_unet_input_blocks_4_"), ("M00", "lora_unet_middle_block_"), ("OUT02", "lora_unet_output_blocks_2_")])
def test_one_sdxl_block_saves_only_that_block(network_type, block, prefix):
    network = AdapterNetwork(tiny_components(Family.SDXL), spec(network_type=network_type, blocks=[block]))
    keys = network.tensors_for_save(torch.float32)
    assert keys and all(key.startswith(prefix) for key in keys)


def test_sdxl_rejects_sd1_only_blocks_but_default_selection_means_all():
    components = tiny_components(Family.SDXL)
    with pytest.raises(UserError, match=r"IN09 do not exist in this model; choose from BASE, IN00, .*, OUT08$"):
        AdapterNetwork(components, spec(blocks=["IN09"]))
    network = AdapterNetwork(components, spec(network_type="c3lier"))
    assert {m.lora_name.split("_")[1] for m in network.text_encoder_modules} == {"te1", "te2"}
    assert any("output_blocks_8_" in m.lora_name for m in network.unet_modules)


@pytest.mark.parametrize("family", [Family.SD2, Family.SDXL])
@pytest.mark.parametrize("element, wanted, unwanted", [("CrossAttention", "_attn2_", "_attn1_"), ("SelfAttention", "_attn1_", "_attn2_")])
def test_elements_select_attention_kind_in_every_family(family, element, wanted, unwanted):
    network = AdapterNetwork(tiny_components(family), spec(element=element, network_type="c3lier"))
    names = [m.lora_name for m in network.all_modules]
    assert names and all(wanted in n and unwanted not in n for n in names)
    assert not network.text_encoder_modules


def test_resume_continues_from_a_file_and_refuses_another_shape(tmp_path):
    from traintrain.networks.kohya_format import save_lora

    trained = randomize_network(AdapterNetwork(tiny_components(), spec(network_type="c3lier")))
    path = tmp_path / "previous.safetensors"
    save_lora(path, trained.tensors_for_save(torch.float32), {})
    resumed = AdapterNetwork(tiny_components(), spec(network_type="c3lier"))
    resumed.resume_from(path)
    assert all(torch.equal(a, b) for a, b in zip(resumed.tensors_for_save(torch.float32).values(), trained.tensors_for_save(torch.float32).values()))
    with pytest.raises(UserError, match="no 'hada_w1_a' tensor.*same rank, network type"):
        AdapterNetwork(tiny_components(), spec(network_type="loha")).resume_from(path)
    with pytest.raises(UserError, match="not found"):
        resumed.resume_from(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("network_type", ["lierla", "c3lier", "loha", "lokr"])
def test_a_training_forward_and_backward_read_nothing_back(network_type):
    components = tiny_components()
    network = AdapterNetwork(components, spec(network_type=network_type)).apply()
    latents, t, hidden = unet_inputs(components)
    with no_read_back():
        out = components.unet(latents, t, encoder_hidden_states=hidden).sample
        out.square().mean().backward()
    assert all(p.grad is not None for module in network.unet_modules for p in module.parameters())


def test_a_files_alpha_sets_the_scale():
    """A module built with alpha 2 that loads a file of alpha 4 computes what one built with 4 does."""
    source = randomize_network(AdapterNetwork(tiny_components(), spec(rank=4, alpha=4)))
    tensors = source.tensors_for_save(torch.float32)
    outputs = []
    for built_alpha in (4, 2):
        components = tiny_components()
        AdapterNetwork(components, spec(rank=4, alpha=built_alpha)).apply().load_tensors(tensors)
        outputs.append(unet_out(components))
    assert torch.equal(outputs[0], outputs[1])


def test_zimage_with_base_trains_the_transformer_only_and_says_so(tmp_path):
    """Block BASE adapts CLIP text encoders; Z-Image's Qwen3 has none of their layers: one warning, no TE keys."""
    from sample_images import write_demo_images
    from traintrain.config import TrainConfig
    from traintrain.jobs.runner import run_job
    from traintrain.models.tiny import write_tiny_model
    from traintrain.networks.kohya_format import load_lora

    model = write_tiny_model("zimage", "diffusers", tmp_path / "zimage-tiny")
    write_demo_images(tmp_path / "images")
    config = TrainConfig(
        model=str(model), lora_data_directory=str(tmp_path / "images"), network_rank=2, network_alpha=2,
        train_iterations=1, train_batch_size=1, image_size=[64, 64], image_buckets_step=64, image_min_length=64,
        train_model_precision="fp32", save_precision="fp32", train_seed=3, save_lora_name="zimage_base",
    )
    events = []
    result = run_job(config, output_dir=tmp_path / "out", report=events.append)
    said = [e.text for e in events if getattr(e, "level", "") == "warning" and "Qwen3" in e.text]
    assert len(said) == 1 and "not trained" in said[0]
    assert all(k.startswith("transformer.") for k in load_lora(result.path)[0])


@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL])
@pytest.mark.parametrize("element, ends, share", [("CrossAttentionKV", ("_attn2_to_k", "_attn2_to_v"), 2),
                                                  ("CrossAttentionV", ("_attn2_to_v",), 4)])
def test_cross_attention_key_and_value_elements_keep_the_layers_that_read_the_prompt(family, element, ends, share):
    components = tiny_components(family)
    cross = AdapterNetwork(components, spec(element="CrossAttention"))
    chosen = AdapterNetwork(components, spec(element=element))
    names = sorted(m.lora_name for m in chosen.all_modules)
    assert names and names == sorted(n for n in (m.lora_name for m in cross.all_modules) if n.endswith(ends))
    assert len(names) == len(cross.all_modules) // share and not chosen.text_encoder_modules  # q and out stay frozen
