"""Z-Image (issue 16): a tiny model as a diffusers folder loads offline, LoRA mode trains on Z-Image's
flow-matching objective with its Qwen3 conditioning, and the saved file loads in diffusers with the same
transformer output."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

from sample_images import write_demo_images
from traintrain.choices import ALL_BLOCK_IDS
from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.jobs.runner import run_job
from traintrain.models.encoding import encode_prompts
from traintrain.models.families import Family, is_flux_checkpoint, is_sd3_checkpoint, is_zimage_checkpoint
from traintrain.models.loading import config_template, load_model, read_weight_shapes
from traintrain.models.tiny import build_tiny_components, write_tiny_model
from traintrain.modes.flow_matching import ZIMAGE_SHIFT, flow_matching_step_loss, shifted_sigmas, transformer_predict
from traintrain.networks.kohya_format import load_lora, save_lora
from traintrain.networks.network import AdapterNetwork, NetworkSpec


def _spec(**values) -> NetworkSpec:
    return NetworkSpec(**({"blocks": list(ALL_BLOCK_IDS)} | values))


@pytest.fixture(scope="module")
def zimage():
    components = build_tiny_components(Family.ZIMAGE)
    for part in (components.transformer, components.vae, *components.text_encoders):
        part.requires_grad_(False)
    return components


@pytest.fixture(scope="module")
def folder(tmp_path_factory, zimage):
    return write_tiny_model("zimage", "diffusers", tmp_path_factory.mktemp("zimage") / "zimage-diffusers",
                            components=zimage)


def _pipeline(components) -> ZImagePipeline:
    return ZImagePipeline(FlowMatchEulerDiscreteScheduler.from_config(config_template(Family.ZIMAGE, "scheduler")),
                          components.vae, components.text_encoders[0], components.tokenizers[0],
                          components.transformer)


def _same_weights(first, second) -> None:
    a, b = first.state_dict(), second.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_tiny_zimage_loads_offline(folder, zimage):
    loaded = load_model(folder)
    assert loaded.family is Family.ZIMAGE and isinstance(loaded.transformer, ZImageTransformer2DModel)
    for ours, theirs in zip((zimage.transformer, zimage.vae, *zimage.text_encoders),
                            (loaded.transformer, loaded.vae, *loaded.text_encoders), strict=True):
        _same_weights(ours, theirs)
    assert loaded.vae.config.latent_channels == 16
    assert (loaded.spec.latent_scale, loaded.spec.latent_shift) == (0.3611, 0.1159)
    assert loaded.tokenizers[0]("a red cat").input_ids == zimage.tokenizers[0]("a red cat").input_ids
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "ZImagePipeline"
    assert read_weight_shapes(folder).family is Family.ZIMAGE
    with pytest.raises(AttributeError, match="transformer"):
        loaded.unet  # noqa: B018 - the SD name refuses clearly


def test_reference_keys_are_detected():
    reference = {f"model.diffusion_model.{k}" for k in ("layers.0.attention.qkv.weight", "cap_embedder.1.weight",
                                                          "noise_refiner.0.attention.qkv.weight")}
    assert is_zimage_checkpoint(reference) and is_zimage_checkpoint({k.split(".", 2)[2] for k in reference})
    assert not is_flux_checkpoint(reference) and not is_sd3_checkpoint(reference)
    assert not is_zimage_checkpoint({"model.diffusion_model.input_blocks.0.0.weight"})


def test_conditioning_matches_the_pipeline(zimage):
    prompts = ["a photo of a cat", "dog"]
    with torch.no_grad():
        ours = encode_prompts(zimage, prompts)
        theirs, _ = _pipeline(zimage).encode_prompt(list(prompts), torch.device("cpu"),
                                                    do_classifier_free_guidance=False, max_sequence_length=24)
    assert ours.mask is not None and ours.pooled is None
    for index, states in enumerate(theirs):
        assert torch.equal(ours.hidden[index][ours.mask[index]], states)


def test_sigmas_follow_the_scheduler_shift():
    config = config_template(Family.ZIMAGE, "scheduler")
    assert config["shift"] == ZIMAGE_SHIFT == 3.0 and not config["use_dynamic_shifting"]
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    timesteps = torch.tensor([0, 250, 999])
    assert torch.allclose(shifted_sigmas(timesteps, ZIMAGE_SHIFT), scheduler.sigmas[999 - timesteps], atol=1e-6)


def _config(**values) -> TrainConfig:
    settings = dict(model="unused", lora_data_directory=".", network_rank=4, network_alpha=2,
                    train_min_timesteps=0, train_max_timesteps=1000)
    return TrainConfig(**(settings | values))


def test_lora_training_lowers_the_loss(zimage):
    components = copy.deepcopy(zimage)
    network = AdapterNetwork(components, _spec(rank=4, alpha=4)).apply()
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cond = encode_prompts(components, ["a red cat", "a blue dog in the style"])
    optimizer = torch.optim.Adam(network.unet_parameters(), lr=3e-2)
    losses = []
    for _ in range(8):  # the same noise and timesteps every step: the fixed batch's loss must fall
        loss = flow_matching_step_loss(components, latents, cond, _config(), torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_saved_file_loads_in_diffusers_with_the_same_output(tmp_path, zimage):
    ours = copy.deepcopy(zimage)
    network = AdapterNetwork(ours, _spec(rank=4, alpha=2)).apply()
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for module in network.all_modules:
            module.lora_up.weight.copy_(torch.randn(module.lora_up.weight.shape, generator=generator) * 0.1)
    path = tmp_path / "zimage_lora.safetensors"
    tensors = network.tensors_for_save(torch.float32)
    assert not any(key.endswith(".alpha") for key in tensors)
    assert {"transformer.layers.0.attention.to_q.lora_A.weight",
            "transformer.noise_refiner.0.feed_forward.w1.lora_B.weight",
            "transformer.context_refiner.0.attention.to_out.0.lora_A.weight"} <= set(tensors)
    save_lora(path, tensors, {"ss_base_model_version": "zimage"})
    theirs = copy.deepcopy(zimage)
    _pipeline(theirs).load_lora_weights(str(path))
    noisy = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cond = encode_prompts(zimage, ["a photo of a cat", "dog"])
        sigmas = torch.tensor([0.6, 0.3])
        expected = transformer_predict(ours, noisy, sigmas, cond)
        got = transformer_predict(theirs, noisy, sigmas, cond)
        base = transformer_predict(zimage, noisy, sigmas, cond)
    assert (expected - base).abs().max() > 1e-2  # the adapter really changes the output
    assert (expected - got).abs().max() <= 1e-4


def test_block_selection_restricts_saved_keys(zimage):
    components = copy.deepcopy(zimage)
    first = AdapterNetwork(components, NetworkSpec(rank=2, alpha=2, blocks=["L00"])).tensors_for_save(torch.float16)
    refiner = AdapterNetwork(components, NetworkSpec(rank=2, alpha=2, blocks=["N00", "C00"])).tensors_for_save(
        torch.float16)
    assert first and all(k.startswith("transformer.layers.0.") for k in first)
    assert any(".adaLN_modulation." in k for k in first) and any(".feed_forward.w2." in k for k in first)
    assert refiner and {k.split(".")[1] for k in refiner} == {"noise_refiner", "context_refiner"}
    attention = AdapterNetwork(components, NetworkSpec(rank=2, alpha=2, blocks=["L01"], element="SelfAttention"))
    assert all(".layers.1.attention." in k for k in attention.tensors_for_save(torch.float16))
    with pytest.raises(UserError, match="L05"):
        AdapterNetwork(components, NetworkSpec(blocks=["L05"]))
    with pytest.raises(UserError, match="Z-Image has no cross-attention"):
        AdapterNetwork(components, _spec(element="CrossAttention"))


def test_resume_across_families_is_refused(tmp_path, zimage):
    from helpers import tiny_components

    sd1, flux = tiny_components(Family.SD1), build_tiny_components(Family.FLUX)
    zimage_file = tmp_path / "zimage.safetensors"
    save_lora(zimage_file, AdapterNetwork(copy.deepcopy(zimage), _spec()).tensors_for_save(torch.float16),
              {"ss_base_model_version": "zimage"})
    for other in (sd1, flux):
        with pytest.raises(UserError, match="a LoRA for zimage models") as error:
            AdapterNetwork(other, _spec()).resume_from(zimage_file)
        assert error.value.field == "network_resume"
    bare = tmp_path / "bare.safetensors"  # no metadata: the keys say Z-Image
    save_lora(bare, load_lora(zimage_file)[0], {})
    with pytest.raises(UserError, match="zimage"):
        AdapterNetwork(flux, _spec()).resume_from(bare)
    AdapterNetwork(copy.deepcopy(zimage), _spec()).resume_from(zimage_file)  # the same family continues


def test_lora_job_on_a_zimage_folder(folder, tmp_path):
    write_demo_images(tmp_path / "images")
    size = 64
    config = TrainConfig(
        model=str(folder), lora_data_directory=str(tmp_path / "images"), network_rank=4, network_alpha=4,
        train_iterations=2, train_batch_size=2, train_learning_rate=1e-3, image_size=[size, size],
        image_buckets_step=size, image_min_length=size, train_model_precision="fp32", save_precision="fp32",
        train_seed=3, save_lora_name="zimage_lora",
    )
    result = run_job(config, output_dir=tmp_path / "out")
    tensors, metadata = load_lora(result.path)
    assert metadata["ss_base_model_version"] == "zimage"
    assert metadata["modelspec.architecture"] == "Z-Image/lora"
    assert metadata["modelspec.prediction_type"] == "flow"
    assert all(k.startswith(("transformer.layers.", "transformer.noise_refiner.", "transformer.context_refiner."))
               for k in tensors) and len(result.losses) == 2


def test_a_reference_single_file_is_refused_clearly(tmp_path):
    from safetensors.torch import save_file

    single = tmp_path / "z_image_turbo_bf16.safetensors"
    save_file({f"model.diffusion_model.{k}": torch.zeros(2) for k in (
        "layers.0.attention.qkv.weight", "cap_embedder.1.weight", "noise_refiner.0.attention.qkv.weight")}, str(single))
    for read in (load_model, read_weight_shapes):
        with pytest.raises(UserError, match="diffusers folder") as error:
            read(single)
        assert error.value.field == "model"


def test_older_libraries_are_named_when_a_zimage_model_is_used(folder, monkeypatch):
    """The Web-UI hosts pin diffusers 0.31 (no Z-Image): the other families work there (tests/test_host_pins.py);
    a Z-Image model gets one error naming the versions it needs."""
    import importlib
    import types

    real = importlib.import_module

    def diffusers_0_31(name, *args):  # diffusers resolves its classes lazily: stand in for the whole module
        return types.SimpleNamespace(__version__="0.31.0") if name == "diffusers" else real(name, *args)

    monkeypatch.setattr(importlib, "import_module", diffusers_0_31)
    with pytest.raises(UserError, match=r"Z-Image needs diffusers 0\.36 or newer; this Python has diffusers") as error:
        load_model(str(folder))
    assert error.value.field == "model"
