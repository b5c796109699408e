"""Flux.1 (issue 16, first slice): tiny models in both formats load offline, LoRA mode trains on the
flow-matching objective, and the saved file loads in diffusers with the same transformer output."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

from helpers import randomize_network
from sample_images import write_demo_images
from traintrain.choices import ALL_BLOCK_IDS
from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.jobs.runner import run_job
from traintrain.models.checkpoint_kinds import checkpoint_family, tensor_shapes
from traintrain.models.checkpoint_reading import read_checkpoint
from traintrain.models.encoding import encode_prompts
from traintrain.models.families import Family, is_flux_checkpoint
from traintrain.models.flux_keys import bfl_to_diffusers, diffusers_to_bfl
from traintrain.models.loading import load_model, read_weight_shapes
from traintrain.models.tiny import write_tiny_model
from traintrain.modes.flow_matching import pack, transformer_predict, unpack
from traintrain.networks.kohya_format import load_lora, save_lora
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from transformer_family_helpers import (
    EncoderWatch,
    all_blocks_spec,
    assert_lora_training_lowers_the_loss,
    assert_same_weights,
    clip_outputs,
    flow_config,
    frozen_tiny,
)

SIZE = 64  # pixels: 8x8 latents, 16 image tokens



@pytest.fixture(scope="module")
def flux():
    return frozen_tiny(Family.FLUX)


@pytest.fixture(scope="module")
def written(tmp_path_factory, flux):
    root = tmp_path_factory.mktemp("flux")
    single = write_tiny_model("flux", "single-file", root / "models" / "flux1-tiny.safetensors", components=flux)
    folder = write_tiny_model("flux", "diffusers", root / "flux-diffusers", components=flux)
    return root, single, folder



@pytest.mark.parametrize("which", ["single-file", "diffusers"])
def test_tiny_flux_loads_offline_in_both_formats(written, flux, which):
    _, single, folder = written
    loaded = load_model(single if which == "single-file" else folder)
    assert loaded.family is Family.FLUX and isinstance(loaded.transformer, FluxTransformer2DModel)
    for ours, theirs in zip((flux.transformer, flux.vae, *flux.text_encoders),
                            (loaded.transformer, loaded.vae, *loaded.text_encoders), strict=True):
        assert_same_weights(ours, theirs)
    assert loaded.vae.config.latent_channels == 16 and loaded.spec.latent_shift == 0.1159
    assert loaded.tokenizers[1]("a red cat").input_ids == flux.tokenizers[1]("a red cat").input_ids
    with pytest.raises(AttributeError, match="transformer"):
        loaded.unet  # noqa: B018 - the SD name refuses clearly


def test_detection_from_keys_and_folders(written):
    _, single, folder = written
    keys = read_checkpoint(single)
    assert is_flux_checkpoint(keys) and is_flux_checkpoint({"model.diffusion_model." + k for k in keys})
    assert not is_flux_checkpoint({"model.diffusion_model.input_blocks.0.0.weight"})
    assert checkpoint_family(single, tensor_shapes(keys)) is Family.FLUX
    assert read_weight_shapes(folder).family is Family.FLUX
    assert read_weight_shapes(single).family is Family.FLUX
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "FluxPipeline"


def test_bfl_layout_matches_diffusers_converter(flux):
    """Our map against diffusers' own converter, on every tensor its hard-coded 3072 width does not split."""
    config = flux.transformer.config
    bfl = diffusers_to_bfl(flux.transformer.state_dict(), config.num_layers, config.num_single_layers)
    assert {k: v.shape for k, v in bfl_to_diffusers(bfl).items()} == {
        k: v.shape for k, v in flux.transformer.state_dict().items()}
    width = bfl["img_in.weight"].shape[0]
    padded = dict(bfl)
    for key in [k for k in bfl if ".linear1." in k]:  # the split diffusers can only do at FLUX.1's width
        padded[key] = torch.zeros((21504, width) if key.endswith("weight") else (21504,))
    theirs = convert_flux_transformer_checkpoint_to_diffusers(
        {"model.diffusion_model." + k: v for k, v in padded.items()})
    ours = bfl_to_diffusers(bfl)
    split = ("attn.to_q.", "attn.to_k.", "attn.to_v.", "proj_mlp.")
    compared = [k for k in ours if not (k.startswith("single_transformer_blocks.") and any(s in k for s in split))]
    assert len(compared) > 40
    assert all(torch.equal(ours[k], theirs[k]) for k in compared)


def test_transformer_alone_names_the_files_to_add(tmp_path, flux):
    models = tmp_path / "diffusion_models"  # ComfyUI's layout, in this test's own folder
    models.mkdir()
    single = write_tiny_model("flux", "single-file", models / "flux1.safetensors", components=flux)
    (models / "t5xxl_fp16.safetensors").unlink()
    (models / "ae.safetensors").unlink()
    with pytest.raises(UserError) as error:
        load_model(single)
    assert "t5xxl_fp16.safetensors" in error.value.message and "ae.safetensors" in error.value.message
    assert "clip_l" not in error.value.problem and error.value.field == "model"
    # ComfyUI's layout: the encoders and the VAE in sibling folders
    (tmp_path / "clip").mkdir()
    (models / "clip_l.safetensors").rename(tmp_path / "clip" / "clip_l.safetensors")
    with pytest.raises(UserError, match="t5xxl_fp16"):
        load_model(single)


def test_packing():  # the noise levels: tests/test_flow_schedule.py
    latents = torch.randn(2, 16, 8, 6)
    assert pack(latents).shape == (2, 12, 64) and torch.equal(unpack(pack(latents), 8, 6), latents)



def test_lora_training_lowers_the_loss(flux):
    assert_lora_training_lowers_the_loss(flux, ["a red cat", "a blue dog"], steps=12)



def test_saved_file_loads_in_diffusers_with_the_same_output(tmp_path, flux):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    ours = copy.deepcopy(flux)
    network = randomize_network(AdapterNetwork(ours, all_blocks_spec(rank=4, alpha=2)).apply(), seed=4, scale=0.1)
    path = tmp_path / "flux_lora.safetensors"
    save_lora(path, network.tensors_for_save(torch.float32), {"ss_base_model_version": "flux1"})
    theirs = copy.deepcopy(flux)
    pipe = FluxPipeline(FlowMatchEulerDiscreteScheduler(), theirs.vae, theirs.text_encoders[0], theirs.tokenizers[0],
                        theirs.text_encoders[1], theirs.tokenizers[1], theirs.transformer)
    pipe.load_lora_weights(str(path))
    generator = torch.Generator().manual_seed(2)
    noisy = torch.randn(1, 16, 8, 8, generator=generator)
    with torch.no_grad():
        cond = encode_prompts(flux, ["a photo of a cat"])
        sigmas = torch.tensor([0.6])
        expected = transformer_predict(ours, noisy, sigmas, cond)
        got = transformer_predict(theirs, noisy, sigmas, cond)
        base = transformer_predict(flux, noisy, sigmas, cond)
    assert (expected - base).abs().max() > 1e-2  # the adapter really changes the output
    assert (expected - got).abs().max() <= 1e-4
    # block BASE: CLIP-L's LoRA, named as FluxPipeline's loader reads it, gives diffusers our CLIP-L outputs
    assert any(k.startswith("text_encoder.text_model.encoder.layers.") for k in network.tensors_for_save(torch.float32))
    ours_clip, theirs_clip, base_clip = (clip_outputs(c.text_encoders[0], flux.tokenizers[0])
                                         for c in (ours, theirs, flux))
    assert (ours_clip - base_clip).abs().max() > 1e-2
    assert (ours_clip - theirs_clip).abs().max() <= 1e-4



def test_base_trains_clip_l_at_its_learning_rate_and_never_t5(flux):
    from traintrain.modes.common import parameter_groups

    network = AdapterNetwork(copy.deepcopy(flux), all_blocks_spec(rank=2, alpha=2))
    text_keys = {k for k in network.tensors_for_save(torch.float32) if not k.startswith("transformer.")}
    clip_layers = sum(1 for name, _ in flux.text_encoders[0].named_modules() if name.endswith(("_proj", "fc1", "fc2")))
    assert len(network.text_encoder_modules) == clip_layers  # q, k, v, out, fc1, fc2 of each layer; nothing of T5
    assert text_keys and all(k.startswith("text_encoder.text_model.encoder.layers.") for k in text_keys)
    groups = parameter_groups(network, flow_config(train_learning_rate=1e-4, train_textencoder_learning_rate=3e-5))
    assert [g["lr"] for g in groups] == [1e-4, 3e-5]
    assert groups[1]["params"] == network.text_encoder_parameters()
    without_base = AdapterNetwork(copy.deepcopy(flux), all_blocks_spec(blocks=list(ALL_BLOCK_IDS[1:])))
    assert not without_base.text_encoder_modules
    assert all(k.startswith("transformer.") for k in without_base.tensors_for_save(torch.float32))


def test_resume_restores_the_text_encoder_modules(tmp_path, flux):
    trained = AdapterNetwork(copy.deepcopy(flux), all_blocks_spec(rank=2, alpha=2))
    randomize_network(trained, seed=4, scale=0.1)
    path = tmp_path / "flux_te.safetensors"
    save_lora(path, trained.tensors_for_save(torch.float32), {"ss_base_model_version": "flux1"})
    resumed = AdapterNetwork(copy.deepcopy(flux), all_blocks_spec(rank=2, alpha=2))
    resumed.resume_from(path)
    saved = trained.tensors_for_save(torch.float32)
    again = resumed.tensors_for_save(torch.float32)
    assert any(k.startswith("text_encoder.") for k in again)
    assert set(again) == set(saved) and all(torch.equal(saved[k], again[k]) for k in saved)


def test_block_selection_restricts_saved_keys(flux):
    components = copy.deepcopy(flux)
    double = AdapterNetwork(components, NetworkSpec(rank=2, alpha=2, blocks=["D00"])).tensors_for_save(torch.float16)
    single = AdapterNetwork(components, NetworkSpec(rank=2, alpha=2, blocks=["S00"])).tensors_for_save(torch.float16)
    assert double and all(k.startswith("transformer.transformer_blocks.0.") for k in double)
    assert single and all(k.startswith("transformer.single_transformer_blocks.0.") for k in single)
    assert {k.rsplit(".", 2)[-2] + "." + k.rsplit(".", 1)[-1] for k in double if "lora_" in k} == {
        "lora_A.weight", "lora_B.weight"}
    with pytest.raises(UserError, match="D05"):
        AdapterNetwork(components, NetworkSpec(blocks=["D05"]))
    with pytest.raises(UserError, match="cross-attention"):
        AdapterNetwork(components, all_blocks_spec(element="CrossAttention"))


def test_resume_across_families_is_refused(tmp_path, flux):
    from helpers import tiny_components

    sd1 = tiny_components(Family.SD1)
    flux_file, sd1_file = tmp_path / "flux.safetensors", tmp_path / "sd1.safetensors"
    save_lora(flux_file, AdapterNetwork(copy.deepcopy(flux), all_blocks_spec()).tensors_for_save(torch.float16),
              {"ss_base_model_version": "flux1"})
    save_lora(sd1_file, AdapterNetwork(sd1, all_blocks_spec()).tensors_for_save(torch.float16),
              {"ss_base_model_version": "sd_v1"})
    with pytest.raises(UserError, match="flux1") as error:
        AdapterNetwork(sd1, all_blocks_spec()).resume_from(flux_file)
    assert error.value.field == "network_resume"
    with pytest.raises(UserError, match="sd_v1"):
        AdapterNetwork(copy.deepcopy(flux), all_blocks_spec()).resume_from(sd1_file)
    network = AdapterNetwork(copy.deepcopy(flux), all_blocks_spec())
    network.resume_from(flux_file)  # the same family continues


@pytest.mark.parametrize("blocks", ["default", "without BASE"])
def test_lora_job_on_a_flux_single_file(written, tmp_path, monkeypatch, blocks):
    root, single, _ = written
    write_demo_images(tmp_path / "images")
    events = []
    network_blocks = list(ALL_BLOCK_IDS) if blocks == "default" else list(ALL_BLOCK_IDS[1:])
    config = TrainConfig(
        model=str(single), lora_data_directory=str(tmp_path / "images"), network_rank=4, network_alpha=4,
        train_iterations=3, train_batch_size=2, train_learning_rate=1e-3, image_size=[SIZE, SIZE],
        image_buckets_step=SIZE, image_min_length=SIZE, train_model_precision="fp32", save_precision="fp32",
        train_seed=3, save_lora_name="flux_lora", preview_prompts="a cat", network_blocks=network_blocks,
        train_textencoder_learning_rate=1e-3,
    )
    t5 = EncoderWatch(monkeypatch, "T5EncoderModel")
    result = run_job(config, output_dir=tmp_path / "out", report=events.append)
    tensors, metadata = load_lora(result.path)
    assert metadata["ss_base_model_version"] == "flux1"
    assert metadata["modelspec.architecture"] == "flux-1-dev/lora"
    assert metadata["modelspec.prediction_type"] == "flow"
    assert len(result.losses) == 3
    text_up = [v for k, v in tensors.items() if k.startswith("text_encoder.") and k.endswith("lora_B.weight")]
    if blocks == "default":  # BASE: CLIP-L trained, its up factors moved from their zero init
        assert text_up and all(v.abs().max() > 0 for v in text_up)
        assert all(k.startswith(("transformer.", "text_encoder.text_model.")) for k in tensors)
    else:
        assert all(k.startswith("transformer.") for k in tensors)
    warnings = [e.text for e in events if getattr(e, "level", "") == "warning"]
    assert not any("preview" in w for w in warnings) and not any("BASE" in w for w in warnings)
    # T5 went to the CPU once the prompts were cached, ran at no step, and came back (to the CPU here) after
    assert t5.moves == [("cpu", 0), ("cpu", 0)]
    assert result.outcome.preview == result.path.parent / "flux_lora_preview.png"  # rendered by FluxPipeline
    assert result.outcome.preview.is_file()


def test_ileco_trains_clip_l_with_network_train_text_encoder(written, tmp_path, monkeypatch):
    """The Original prompt is encoded every step with CLIP-L's adapter on, T5's states of it once."""
    root, single, _ = written
    config = TrainConfig(
        model=str(single), mode="iLECO", original_prompt="a red cat", target_prompt="a blue dog",
        network_train_text_encoder=True, network_rank=4, network_alpha=4, train_iterations=2,
        train_learning_rate=1e-2, image_size=[SIZE, SIZE], train_model_precision="fp32", save_precision="fp32",
        train_seed=3, save_lora_name="ileco_te", preview_sampling_steps=1,
    )
    t5 = EncoderWatch(monkeypatch, "T5EncoderModel")
    events = []
    result = run_job(config, output_dir=tmp_path / "out", report=events.append)
    tensors, _ = load_lora(result.path)
    text_up = [v for k, v in tensors.items() if k.startswith("text_encoder.") and k.endswith("lora_B.weight")]
    assert text_up and all(v.abs().max() > 0 for v in text_up)
    assert not any("network_train_text_encoder" in e.text for e in events if getattr(e, "level", "") == "warning")
    assert t5.moves[:2] == [("cpu", 0), ("cpu", 0)]


@pytest.mark.parametrize("network_type", ["loha", "lokr"])
def test_lycoris_types_adapt_the_flux_linears(flux, network_type):
    network = AdapterNetwork(copy.deepcopy(flux), all_blocks_spec(network_type=network_type, rank=2, alpha=2))
    saved = network.tensors_for_save(torch.float32)
    assert saved and all(k.startswith(("transformer.", "text_encoder.")) and "lora_" not in k for k in saved)
    again = AdapterNetwork(copy.deepcopy(flux), all_blocks_spec(network_type=network_type, rank=2, alpha=2))
    again.load_tensors(saved)
    assert all(torch.equal(saved[k], v) for k, v in again.tensors_for_save(torch.float32).items())


@pytest.mark.parametrize("element", ["CrossAttention", "CrossAttentionKV", "CrossAttentionV"])
def test_cross_attention_elements_are_refused_with_the_way_out(flux, element):
    with pytest.raises(UserError, match=f"{element}: Flux has no cross-attention.*use Full, or SelfAttention") as error:
        AdapterNetwork(copy.deepcopy(flux), all_blocks_spec(element=element))
    assert error.value.field == "network_element"
