"""SD3 / SD3.5 (issue 16): tiny models in the reference single-file layouts and as a diffusers folder load
offline, LoRA mode trains on SD3's flow-matching objective, and the saved file loads in diffusers with the
same transformer output."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

from helpers import randomize_network
from sample_images import write_demo_images
from traintrain.choices import ALL_BLOCK_IDS
from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.jobs.runner import run_job
from traintrain.models.checkpoint_kinds import checkpoint_family, tensor_shapes
from traintrain.models.checkpoint_reading import read_checkpoint
from traintrain.models.encoding import encode_prompts
from traintrain.models.families import Family, is_flux_checkpoint, is_sd3_checkpoint
from traintrain.models.loading import load_model, read_weight_shapes
from traintrain.models.sd3_keys import diffusers_to_sd3
from traintrain.models.sd3_tiny import write_sd3_single_file
from traintrain.models.tiny import build_tiny_components, write_tiny_model
from traintrain.modes.flow_matching import transformer_predict
from traintrain.networks.kohya_format import load_lora, save_lora
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from transformer_family_helpers import (
    all_blocks_spec,
    assert_lora_training_lowers_the_loss,
    assert_same_weights,
    clip_outputs,
    frozen_tiny,
)

SIZE = 64  # pixels: 8x8 latents, 4x4 patches



@pytest.fixture(scope="module")
def sd3():
    return frozen_tiny(Family.SD3)


@pytest.fixture(scope="module")
def written(tmp_path_factory, sd3):
    root = tmp_path_factory.mktemp("sd3")
    single = write_tiny_model("sd3", "single-file", root / "sd3_tiny_incl_clips_t5.safetensors", components=sd3)
    folder = write_tiny_model("sd3", "diffusers", root / "sd3-diffusers", components=sd3)
    return root, single, folder



@pytest.mark.parametrize("which", ["single-file", "diffusers"])
def test_tiny_sd3_loads_offline_in_both_formats(written, sd3, which):
    _, single, folder = written
    loaded = load_model(single if which == "single-file" else folder)
    assert loaded.family is Family.SD3 and isinstance(loaded.transformer, SD3Transformer2DModel)
    for ours, theirs in zip((sd3.transformer, sd3.vae, *sd3.text_encoders),
                            (loaded.transformer, loaded.vae, *loaded.text_encoders), strict=True):
        assert_same_weights(ours, theirs)
    config = loaded.transformer.config
    assert list(config.dual_attention_layers) == [0] and config.qk_norm == "rms_norm"  # SD3.5 Medium's shape
    assert loaded.vae.config.latent_channels == 16 and loaded.spec.latent_shift == 0.0609
    assert loaded.spec.latent_scale == 1.5305
    assert loaded.tokenizers[2]("a red cat").input_ids == sd3.tokenizers[2]("a red cat").input_ids
    with pytest.raises(AttributeError, match="transformer"):
        loaded.unet  # noqa: B018 - the SD name refuses clearly


def test_detection_from_keys_and_folders(written):
    _, single, folder = written
    keys = read_checkpoint(single)
    assert "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight" in keys
    assert is_sd3_checkpoint(keys) and not is_flux_checkpoint(keys)
    assert not is_sd3_checkpoint({"model.diffusion_model.input_blocks.0.0.weight"})
    assert checkpoint_family(single, tensor_shapes(keys)) is Family.SD3
    assert read_weight_shapes(single).family is Family.SD3 and read_weight_shapes(folder).family is Family.SD3
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"


def test_reference_layout_reads_back_through_diffusers_converter(sd3):
    """Our writer's layout, read by diffusers' own converter, gives back every tensor exactly."""
    state = sd3.transformer.state_dict()
    reference = diffusers_to_sd3(state, sd3.transformer.config.num_layers)
    assert "joint_blocks.0.x_block.attn2.qkv.weight" in reference and "pos_embed" in reference
    assert "joint_blocks.1.context_block.attn.proj.weight" not in reference  # the last block's text stream ends
    theirs = convert_sd3_transformer_checkpoint_to_diffusers({"model.diffusion_model." + k: v
                                                              for k, v in reference.items()})
    assert set(theirs) == set(state) and all(torch.equal(theirs[k], state[k]) for k in state)


def test_companion_files_missing_t5_and_missing_clip_g(tmp_path, sd3):
    (tmp_path / "checkpoints").mkdir()  # ComfyUI's layout, in this test's own folder
    single = tmp_path / "checkpoints" / "sd3.5_tiny.safetensors"
    companions = write_sd3_single_file(sd3, single, with_text_encoders=False)
    assert [p.name for p in companions] == ["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"]
    (tmp_path / "text_encoders").mkdir()  # ComfyUI's folder beside the model's
    companions[0].rename(tmp_path / "text_encoders" / "clip_l.safetensors")
    assert_same_weights(load_model(single).text_encoders[0], sd3.text_encoders[0])
    companions[2].unlink()  # no T5: a warning, zeros in its place
    events = []
    without_t5 = load_model(single, report=events.append)
    assert len(without_t5.text_encoders) == 2 and len(without_t5.tokenizers) == 2
    assert any("T5" in e.text and e.level == "warning" for e in events)
    with torch.no_grad():
        cond = encode_prompts(without_t5, ["a red cat"])
    assert cond.hidden.shape == (1, 2 * 77, 96) and not cond.hidden[:, 77:].any()
    companions[1].unlink()
    with pytest.raises(UserError) as error:
        load_model(single)
    assert "clip_g.safetensors" in error.value.message and "t5xxl" not in error.value.problem
    assert error.value.field == "model"


def test_conditioning_matches_the_pipeline(sd3):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(sd3.transformer, FlowMatchEulerDiscreteScheduler(), sd3.vae, sd3.text_encoders[0],
                                    sd3.tokenizers[0], sd3.text_encoders[1], sd3.tokenizers[1], sd3.text_encoders[2],
                                    sd3.tokenizers[2])
    with torch.no_grad():
        ours = encode_prompts(sd3, ["a photo of a cat", "dog"])
        hidden, _, pooled, _ = pipe.encode_prompt(["a photo of a cat", "dog"], None, None,
                                                  do_classifier_free_guidance=False, max_sequence_length=16)
    assert torch.allclose(ours.hidden, hidden, atol=1e-6) and torch.allclose(ours.pooled, pooled, atol=1e-6)



def test_lora_training_lowers_the_loss(sd3):
    assert_lora_training_lowers_the_loss(sd3, ["a red cat", "a blue dog"], steps=12)


def test_saved_file_loads_in_diffusers_with_the_same_output(tmp_path, sd3):
    from diffusers import StableDiffusion3Pipeline

    ours = copy.deepcopy(sd3)
    network = randomize_network(AdapterNetwork(ours, all_blocks_spec(rank=4, alpha=2)).apply(), seed=4, scale=0.1)
    path = tmp_path / "sd3_lora.safetensors"
    save_lora(path, network.tensors_for_save(torch.float32), {"ss_base_model_version": "sd3"})
    theirs = copy.deepcopy(sd3)
    pipe = StableDiffusion3Pipeline(theirs.transformer, FlowMatchEulerDiscreteScheduler(), theirs.vae,
                                    theirs.text_encoders[0], theirs.tokenizers[0], theirs.text_encoders[1],
                                    theirs.tokenizers[1], theirs.text_encoders[2], theirs.tokenizers[2])
    pipe.load_lora_weights(str(path))
    noisy = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cond = encode_prompts(sd3, ["a photo of a cat"])
        sigmas = torch.tensor([0.6])
        expected = transformer_predict(ours, noisy, sigmas, cond)
        got = transformer_predict(theirs, noisy, sigmas, cond)
        base = transformer_predict(sd3, noisy, sigmas, cond)
    assert (expected - base).abs().max() > 1e-2  # the adapter really changes the output
    assert (expected - got).abs().max() <= 1e-4
    # block BASE: CLIP-L's and CLIP-G's LoRAs, alpha folded in as the loader wants, give diffusers our CLIP outputs
    saved = network.tensors_for_save(torch.float32)
    for index, prefix in enumerate(("text_encoder.", "text_encoder_2.")):
        assert any(k.startswith(prefix + "text_model.encoder.layers.") for k in saved)
        ours_clip, theirs_clip, base_clip = (clip_outputs(c.text_encoders[index], sd3.tokenizers[index])
                                             for c in (ours, theirs, sd3))
        assert (ours_clip - base_clip).abs().max() > 1e-2
        assert (ours_clip - theirs_clip).abs().max() <= 1e-4



def test_base_trains_both_clips_and_never_t5(tmp_path, sd3):
    network = AdapterNetwork(copy.deepcopy(sd3), all_blocks_spec(rank=2, alpha=2))
    saved = network.tensors_for_save(torch.float32)
    text_keys = {k for k in saved if not k.startswith("transformer.")}
    layers = [sum(1 for name, _ in encoder.named_modules() if name.endswith(("_proj", "fc1", "fc2")))
              for encoder in sd3.text_encoders[:2]]
    assert len(network.text_encoder_modules) == sum(layers)  # q, k, v, out, fc1, fc2 of each CLIP layer; no T5
    assert text_keys and all(k.startswith(("text_encoder.text_model.", "text_encoder_2.text_model."))
                             for k in text_keys)
    assert not any(k.endswith("alpha") for k in saved)  # the loader refuses them: alpha is in the factors
    path = tmp_path / "sd3_te.safetensors"  # network_resume restores the text encoders' modules too
    randomize_network(network, seed=4, scale=0.1)
    save_lora(path, network.tensors_for_save(torch.float32), {"ss_base_model_version": "sd3"})
    resumed = AdapterNetwork(copy.deepcopy(sd3), all_blocks_spec(rank=2, alpha=2))
    resumed.resume_from(path)
    for before, after in zip(network.text_encoder_modules, resumed.text_encoder_modules, strict=True):
        assert torch.allclose(before.lora_up.weight, after.lora_up.weight)
        assert torch.allclose(before.lora_down.weight, after.lora_down.weight)
    without_base = AdapterNetwork(copy.deepcopy(sd3), all_blocks_spec(blocks=list(ALL_BLOCK_IDS[1:])))
    assert all(k.startswith("transformer.") for k in without_base.tensors_for_save(torch.float32))



def test_block_selection_restricts_saved_keys(sd3):
    components = copy.deepcopy(sd3)
    first = AdapterNetwork(components, NetworkSpec(rank=2, alpha=2, blocks=["J00"])).tensors_for_save(torch.float16)
    last = AdapterNetwork(components, NetworkSpec(rank=2, alpha=2, blocks=["J01"])).tensors_for_save(torch.float16)
    assert first and all(k.startswith("transformer.transformer_blocks.0.") for k in first)
    assert last and all(k.startswith("transformer.transformer_blocks.1.") for k in last)
    assert any(".attn2.to_q." in k for k in first) and not any(".attn2." in k for k in last)
    attention = AdapterNetwork(components, NetworkSpec(rank=2, alpha=2, blocks=["J01"], element="SelfAttention"))
    assert all(".attn." in k for k in attention.tensors_for_save(torch.float16))
    with pytest.raises(UserError, match="J05") as error:
        AdapterNetwork(components, NetworkSpec(blocks=["J05"]))
    assert str(error.value) == ("network_blocks: J05 do not exist in this SD3 model; "
                                "choose among its blocks: J00, J01")
    with pytest.raises(UserError, match="SD3 has no cross-attention"):
        AdapterNetwork(components, all_blocks_spec(element="CrossAttention"))


def test_resume_across_families_is_refused(tmp_path, sd3):
    from helpers import tiny_components

    sd1, flux = tiny_components(Family.SD1), build_tiny_components(Family.FLUX)
    sd3_file, flux_file = tmp_path / "sd3.safetensors", tmp_path / "flux.safetensors"
    save_lora(sd3_file, AdapterNetwork(copy.deepcopy(sd3), all_blocks_spec()).tensors_for_save(torch.float16),
              {"ss_base_model_version": "sd3"})
    save_lora(flux_file, AdapterNetwork(flux, all_blocks_spec()).tensors_for_save(torch.float16),
              {"ss_base_model_version": "flux1"})
    for other in (sd1, flux):
        with pytest.raises(UserError, match="a LoRA for sd3 models") as error:
            AdapterNetwork(other, all_blocks_spec()).resume_from(sd3_file)
        assert error.value.field == "network_resume"
    with pytest.raises(UserError, match="flux1"):
        AdapterNetwork(copy.deepcopy(sd3), all_blocks_spec()).resume_from(flux_file)
    kohya = tmp_path / "kohya.safetensors"  # sd-scripts writes the MMDiT variant as the base model version
    save_lora(kohya, load_lora(sd3_file)[0], {"ss_base_model_version": "5-medium"})
    with pytest.raises(UserError, match="sd3"):
        AdapterNetwork(sd1, all_blocks_spec()).resume_from(kohya)
    AdapterNetwork(copy.deepcopy(sd3), all_blocks_spec()).resume_from(sd3_file)  # the same family continues


def test_lora_job_on_an_sd3_single_file(written, tmp_path):
    _, single, _ = written
    write_demo_images(tmp_path / "images")
    config = TrainConfig(
        model=str(single), lora_data_directory=str(tmp_path / "images"), network_rank=4, network_alpha=4,
        train_iterations=3, train_batch_size=2, train_learning_rate=1e-3, image_size=[SIZE, SIZE],
        image_buckets_step=SIZE, image_min_length=SIZE, train_model_precision="fp32", save_precision="fp32",
        train_seed=3, save_lora_name="sd3_lora",
    )
    events = []
    result = run_job(config, output_dir=tmp_path / "out", report=events.append)
    tensors, metadata = load_lora(result.path)
    assert metadata["ss_base_model_version"] == "sd3"
    assert metadata["modelspec.architecture"] == "stable-diffusion-3-medium/lora"
    assert metadata["modelspec.prediction_type"] == "flow"
    assert len(result.losses) == 3
    # the default blocks include BASE: both CLIPs trained (their up factors moved from the zero init), T5 not
    assert all(k.startswith(("transformer.transformer_blocks.", "text_encoder.text_model.",
                             "text_encoder_2.text_model.")) for k in tensors)
    for prefix in ("text_encoder.", "text_encoder_2."):
        text_up = [v for k, v in tensors.items() if k.startswith(prefix) and k.endswith("lora_B.weight")]
        assert text_up and all(v.abs().max() > 0 for v in text_up)
    assert not any("BASE" in e.text for e in events if getattr(e, "level", "") == "warning")
