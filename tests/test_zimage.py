"""Z-Image (issue 16): a tiny model loads offline as a diffusers folder and as the reference single file with
its companions, LoRA mode trains on Z-Image's flow-matching objective with its Qwen3 conditioning, and the saved
file loads in diffusers with the same transformer output."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import accelerate
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3Model

from sample_images import write_demo_images
from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.jobs.runner import run_job
from traintrain.models.assembly import config_template
from traintrain.models.checkpoint_reading import read_checkpoint
from traintrain.models.encoding import encode_prompts
from traintrain.models.families import Family, is_flux_checkpoint, is_sd3_checkpoint, is_zimage_checkpoint
from traintrain.models.loading import load_model, read_weight_shapes
from traintrain.models.tiny import build_tiny_components, write_tiny_model
from traintrain.models.zimage_keys import diffusers_to_reference, transformer_config
from traintrain.models.zimage_single_file import qwen3_encoder
from traintrain.networks.kohya_format import load_lora, save_lora
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from transformer_family_helpers import (
    EncoderWatch,
    all_blocks_spec,
    assert_lora_training_lowers_the_loss,
    assert_same_weights,
    fixed_predictions,
    frozen_tiny,
)


@pytest.fixture(scope="module")
def zimage():
    return frozen_tiny(Family.ZIMAGE)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, zimage):
    return write_tiny_model("zimage", "diffusers", tmp_path_factory.mktemp("zimage") / "zimage-diffusers",
                            components=zimage)


@pytest.fixture(scope="module")
def single(tmp_path_factory, zimage):
    """The reference transformer file with qwen_3_4b.safetensors and ae.safetensors beside it."""
    return write_tiny_model("zimage", "single-file", tmp_path_factory.mktemp("zimage") / "z_image_turbo.safetensors",
                            components=zimage)


def _pipeline(components) -> ZImagePipeline:
    return ZImagePipeline(FlowMatchEulerDiscreteScheduler.from_config(config_template(Family.ZIMAGE, "scheduler")),
                          components.vae, components.text_encoders[0], components.tokenizers[0],
                          components.transformer)



def test_tiny_zimage_loads_offline(folder, zimage):
    loaded = load_model(folder)
    assert loaded.family is Family.ZIMAGE and isinstance(loaded.transformer, ZImageTransformer2DModel)
    for ours, theirs in zip((zimage.transformer, zimage.vae, *zimage.text_encoders),
                            (loaded.transformer, loaded.vae, *loaded.text_encoders), strict=True):
        assert_same_weights(ours, theirs)
    assert loaded.vae.config.latent_channels == 16
    assert (loaded.spec.latent_scale, loaded.spec.latent_shift) == (0.3611, 0.1159)
    assert loaded.tokenizers[0]("a red cat").input_ids == zimage.tokenizers[0]("a red cat").input_ids
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "ZImagePipeline"
    assert read_weight_shapes(folder).family is Family.ZIMAGE
    with pytest.raises(AttributeError, match="transformer"):
        loaded.unet  # noqa: B018 - the SD name refuses clearly


def test_reference_keys_are_detected():
    reference = {f"model.diffusion_model.{k}" for k in ("layers.0.attention.qkv.weight", "cap_embedder.1.weight",
                                                          "noise_refiner.0.attention.qkv.weight",
                                                          "layers.0.adaLN_modulation.0.weight")}
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



def test_lora_training_lowers_the_loss(zimage):
    assert_lora_training_lowers_the_loss(zimage, ["a red cat", "a blue dog in the style"], steps=8)


def test_saved_file_loads_in_diffusers_with_the_same_output(tmp_path, zimage):
    ours = copy.deepcopy(zimage)
    network = AdapterNetwork(ours, all_blocks_spec(rank=4, alpha=2)).apply()
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
    expected, got, base = fixed_predictions(zimage, ours, theirs, zimage)
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
        AdapterNetwork(components, all_blocks_spec(element="CrossAttention"))


def test_resume_across_families_is_refused(tmp_path, zimage):
    from helpers import tiny_components

    sd1, flux = tiny_components(Family.SD1), build_tiny_components(Family.FLUX)
    zimage_file = tmp_path / "zimage.safetensors"
    save_lora(zimage_file, AdapterNetwork(copy.deepcopy(zimage), all_blocks_spec()).tensors_for_save(torch.float16),
              {"ss_base_model_version": "zimage"})
    for other in (sd1, flux):
        with pytest.raises(UserError, match="a LoRA for zimage models") as error:
            AdapterNetwork(other, all_blocks_spec()).resume_from(zimage_file)
        assert error.value.field == "network_resume"
    bare = tmp_path / "bare.safetensors"  # no metadata: the keys say Z-Image
    save_lora(bare, load_lora(zimage_file)[0], {})
    with pytest.raises(UserError, match="zimage"):
        AdapterNetwork(flux, all_blocks_spec()).resume_from(bare)
    AdapterNetwork(copy.deepcopy(zimage), all_blocks_spec()).resume_from(zimage_file)  # the same family continues


def test_lora_job_on_a_zimage_folder(folder, tmp_path, monkeypatch):
    write_demo_images(tmp_path / "images")
    size = 64
    config = TrainConfig(
        model=str(folder), lora_data_directory=str(tmp_path / "images"), network_rank=4, network_alpha=4,
        train_iterations=2, train_batch_size=2, train_learning_rate=1e-3, image_size=[size, size],
        image_buckets_step=size, image_min_length=size, train_model_precision="fp32", save_precision="fp32",
        train_seed=3, save_lora_name="zimage_lora", preview_prompts="a cat", preview_sampling_steps=1,
    )
    qwen3 = EncoderWatch(monkeypatch, "Qwen3Model")
    result = run_job(config, output_dir=tmp_path / "out")
    # Qwen3 went to the CPU once the captions were cached, ran at no step, came back for the previews
    assert qwen3.moves == [("cpu", 0), ("cpu", 0)] and result.outcome.preview.is_file()
    tensors, metadata = load_lora(result.path)
    assert metadata["ss_base_model_version"] == "zimage"
    assert metadata["modelspec.architecture"] == "Z-Image/lora"
    assert metadata["modelspec.prediction_type"] == "flow"
    assert all(k.startswith(("transformer.layers.", "transformer.noise_refiner.", "transformer.context_refiner."))
               for k in tensors) and len(result.losses) == 2


@pytest.mark.parametrize("mode", ["iLECO", "Difference"])
def test_qwen3_waits_on_the_cpu_while_the_other_modes_train(folder, tmp_path, monkeypatch, mode):
    from PIL import Image

    pair = {}
    if mode == "Difference":
        for name, colour in (("original_image", "red"), ("target_image", "blue")):
            Image.new("RGB", (64, 64), colour).save(tmp_path / f"{name}.png")
            pair[name] = str(tmp_path / f"{name}.png")
    config = TrainConfig(
        model=str(folder), mode=mode, original_prompt="a red cat", target_prompt="a blue dog", network_rank=4,
        network_alpha=4, train_iterations=2, train_learning_rate=1e-3, image_size=[64, 64],
        train_model_precision="fp32", save_precision="fp32", train_seed=3, save_lora_name=f"zimage_{mode}", **pair,
    )
    qwen3 = EncoderWatch(monkeypatch, "Qwen3Model")
    run_job(config, output_dir=tmp_path / "out")
    loops = 2 if mode == "Difference" else 1  # Difference: the copier's loop, then the difference's
    assert qwen3.moves == [("cpu", 0)] * 2 * loops


@pytest.mark.parametrize("form", ["folder", "single file"])
def test_older_libraries_are_named_when_a_zimage_model_is_used(folder, single, form, monkeypatch):
    """The Web-UI hosts pin diffusers 0.31 (no Z-Image): the other families work there (tests/test_host_pins.py);
    a Z-Image model gets one error naming the versions it needs."""
    import importlib
    import types

    real = importlib.import_module

    def diffusers_0_31(name, *args):  # diffusers resolves its classes lazily: stand in for the whole module
        return types.SimpleNamespace(__version__="0.31.0") if name == "diffusers" else real(name, *args)

    monkeypatch.setattr(importlib, "import_module", diffusers_0_31)
    with pytest.raises(UserError, match=r"Z-Image needs diffusers 0\.36 or newer; this Python has diffusers") as error:
        load_model(str(folder if form == "folder" else single))
    assert error.value.field == "model"


def _same_model(loaded, zimage) -> None:
    for ours, theirs in zip((zimage.transformer, zimage.vae, *zimage.text_encoders),
                            (loaded.transformer, loaded.vae, *loaded.text_encoders), strict=True):
        assert_same_weights(ours, theirs)


def _public(config) -> dict:
    return {key: value for key, value in config.items() if not key.startswith("_")}


def test_the_reference_single_file_loads_like_the_folder(single, folder, zimage):
    from_file, from_folder = load_model(single), load_model(folder)
    assert from_file.family is Family.ZIMAGE and isinstance(from_file.transformer, ZImageTransformer2DModel)
    _same_model(from_file, zimage)
    assert _public(from_file.transformer.config) == _public(from_folder.transformer.config)
    assert from_file.tokenizers[0]("a red cat").input_ids == zimage.tokenizers[0]("a red cat").input_ids
    assert "norm_final.weight" in read_checkpoint(single)  # the release's unused norm, dropped on loading
    assert read_weight_shapes(single).family is Family.ZIMAGE
    expected, got = fixed_predictions(from_folder, from_folder, from_file)
    with torch.no_grad():
        file_states, folder_states = (encode_prompts(m, ["a photo of a cat", "dog"]).hidden for m in (from_file,
                                                                                                     from_folder))
    assert (file_states - folder_states).abs().max() <= 1e-5
    assert (expected - got).abs().max() <= 1e-5


def test_release_sized_shapes_give_the_bundled_configs():
    """The widths, counts and heads read from Z-Image-Turbo-sized tensors (empty, no memory) are the template's."""
    template = config_template(Family.ZIMAGE, "transformer")
    with accelerate.init_empty_weights():
        transformer = ZImageTransformer2DModel.from_config(template)
        encoder = Qwen3Model(Qwen3Config(**config_template(Family.ZIMAGE, "text_encoder")))
    reference = diffusers_to_reference(transformer.state_dict(), transformer.config)
    assert reference["layers.0.attention.qkv.weight"].shape == (3 * 3840, 3840)
    assert transformer_config(reference) == template
    state = {"model." + key: value for key, value in encoder.state_dict().items()}
    read = qwen3_encoder(Path("qwen_3_4b.safetensors"), state).config
    assert read.to_dict() == encoder.config.to_dict()


def test_missing_companions_are_named_and_comfyui_folders_are_searched(tmp_path, zimage):
    models = tmp_path / "diffusion_models"  # ComfyUI's layout, in this test's own folder
    single = write_tiny_model("zimage", "single-file", models / "z_image_turbo_bf16.safetensors", components=zimage)
    for folder in ("text_encoders", "vae", "kept"):
        (tmp_path / folder).mkdir()
    (models / "qwen_3_4b.safetensors").rename(tmp_path / "text_encoders" / "qwen_3_4b.safetensors")
    (models / "ae.safetensors").rename(tmp_path / "kept" / "ae.safetensors")
    with pytest.raises(UserError) as error:
        load_model(single)
    assert "ae.safetensors" in error.value.message and str(tmp_path / "vae") in error.value.message
    assert "qwen_3_4b" not in error.value.message and error.value.field == "model"
    (tmp_path / "text_encoders" / "qwen_3_4b.safetensors").rename(tmp_path / "kept" / "qwen_3_4b.safetensors")
    with pytest.raises(UserError) as error:
        load_model(single)
    assert all(part in error.value.message for part in (
        "qwen_3_4b.safetensors", str(tmp_path / "text_encoders"), "ae.safetensors", str(tmp_path / "vae")))
    (tmp_path / "kept" / "qwen_3_4b.safetensors").rename(tmp_path / "text_encoders" / "qwen_3_4b.safetensors")
    (tmp_path / "kept" / "ae.safetensors").rename(tmp_path / "vae" / "ae.safetensors")
    _same_model(load_model(single), zimage)


def test_an_all_in_one_file_loads(tmp_path, single, zimage):
    """Transformer, text encoder and VAE in one file, under ComfyUI's checkpoint prefixes."""
    parts = {"model.diffusion_model.": single, "text_encoders.qwen3_4b.transformer.": single.with_name(
        "qwen_3_4b.safetensors"), "vae.": single.with_name("ae.safetensors")}
    state = {prefix + key: value for prefix, file in parts.items() for key, value in read_checkpoint(file).items()}
    save_file(state, str(tmp_path / "z_image_aio.safetensors"))
    (tmp_path / "z_image_aio.tokenizer").symlink_to(single.with_name(single.stem + ".tokenizer"))
    _same_model(load_model(tmp_path / "z_image_aio.safetensors"), zimage)


def test_lora_trained_on_the_single_file_loads_in_diffusers(single, tmp_path):
    write_demo_images(tmp_path / "images")
    size = 64
    config = TrainConfig(
        model=str(single), lora_data_directory=str(tmp_path / "images"), network_rank=4, network_alpha=4,
        train_iterations=2, train_batch_size=2, train_learning_rate=1e-2, image_size=[size, size],
        image_buckets_step=size, image_min_length=size, train_model_precision="fp32", save_precision="fp32",
        train_seed=3, save_lora_name="zimage_single_lora",
    )
    result = run_job(config, output_dir=tmp_path / "out")
    assert load_lora(result.path)[1]["ss_base_model_version"] == "zimage"
    base = load_model(single)
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    AdapterNetwork(ours, all_blocks_spec(rank=4, alpha=4)).apply().resume_from(result.path)
    _pipeline(theirs).load_lora_weights(str(result.path))
    expected, got, untouched = fixed_predictions(base, ours, theirs, base)
    assert (expected - untouched).abs().max() > 1e-4  # the trained adapter changes the output
    assert (expected - got).abs().max() <= 1e-4


def test_a_lumina2_file_is_not_taken_for_z_image(tmp_path):
    """Lumina 2 shares Z-Image's key names but modulates through `adaLN_modulation.1`."""
    names = ("layers.0.attention.qkv.weight", "cap_embedder.1.weight", "noise_refiner.0.attention.qkv.weight")
    lumina = tmp_path / "lumina_2.safetensors"
    save_file({key: torch.zeros(2, 2) for key in (*names, "layers.0.adaLN_modulation.1.weight")}, str(lumina))
    assert not is_zimage_checkpoint(read_checkpoint(lumina))
    for read in (load_model, read_weight_shapes):  # the loader and the pre-flight header check
        with pytest.raises(UserError, match="this is a Lumina 2 model.*give a Z-Image or Z-Image-Turbo") as error:
            read(lumina)
        assert error.value.field == "model"


def test_a_comfyui_mixed_precision_file_loads_as_the_weights_it_stands_for(single, zimage):
    """fp8 and int8 layers with `.comfy_quant` configs (ComfyUI's `*_fp8mixed` / int8 conversions), the
    rest in float: the header check finds Z-Image, the loader reads each layer times its scale."""
    from safetensors.torch import load_file

    from test_checkpoint_reading import comfy_quant

    state = load_file(str(single))
    matrices = [key.removesuffix(".weight") for key, value in state.items() if key.endswith(".weight")
                and value.ndim == 2 and min(value.shape) >= 16]
    formats = {layer: ("float8_e4m3fn", "int8_tensorwise")[index % 2] for index, layer in enumerate(matrices)}
    tensors, _ = comfy_quant(state, formats)
    mixed = single.with_name("z_image_turbo_fp8mixed.safetensors")  # its companions are beside it
    save_file(tensors, str(mixed))
    assert read_weight_shapes(mixed).family is Family.ZIMAGE
    loaded = load_model(mixed, tokenizer_dir=single.with_name(single.stem + ".tokenizer"))
    expected, got = fixed_predictions(zimage, zimage, loaded)
    error = ((got - expected).abs().mean() / expected.abs().mean()).item()
    print(f"{len(formats)} quantized layers: mean relative error of the transformer's output {error:.3f}")
    assert error <= 0.1


def test_a_comfyui_scaled_fp8_file_loads_as_the_weights_it_stands_for(single, zimage):
    from safetensors.torch import load_file

    from test_checkpoint_reading import scaled_fp8

    scaled = single.with_name("z_image_turbo_fp8_scaled.safetensors")  # its companions are beside it
    save_file(scaled_fp8(load_file(str(single))), str(scaled))
    loaded = load_model(scaled, tokenizer_dir=single.with_name(single.stem + ".tokenizer"))
    expected, got = fixed_predictions(zimage, zimage, loaded)
    error = ((got - expected).abs().mean() / expected.abs().mean()).item()
    print(f"scaled fp8 file: mean relative error of the transformer's output {error:.3f}")
    assert error <= 0.1  # measured 0.049: fp8's 3-bit mantissa (without the scales the weights are off by ~1e4)
