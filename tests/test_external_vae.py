"""model_vae: an external VAE in every layout users have, used for encoding; a wrong-family one refused."""

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import a1111_vae_state, tiny_components
from job_helpers import tiny_job
from traintrain.cli import main
from traintrain.data.dataset import encode_distributions, image_to_tensor
from traintrain.data.images import load_image
from traintrain.data.latent_cache import LatentCache, file_digest, vae_fingerprint
from traintrain.errors import UserError
from traintrain.jobs.runner import run_job
from traintrain.models.external_vae import (
    MIN_LATENT_CORRELATION,
    channel_correlation,
    check_latent_space,
    load_vae,
    probe_image,
    use_external_vae,
)
from traintrain.models.families import Family
from traintrain.models.ldm_convert import VAE_PREFIX
from traintrain.models.tiny import write_tiny_model
from traintrain.training.events import Message


def fine_tune(vae, seed=1, scale=0.02):
    """A 'fine-tune' of `vae`: every weight moved by `scale` of its tensor's spread."""
    tuned = copy.deepcopy(vae)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in tuned.parameters():
            if parameter.numel() > 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale * parameter.std())
    return tuned


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny SD1 job set-up (model seed 0) and a fine-tune of that model's VAE in every layout."""
    root = tmp_path_factory.mktemp("vae")
    tiny_job(root)  # writes root/tiny.safetensors (the seed-0 SD1 model) and root/images
    own = tiny_components(Family.SD1, seed=0).vae
    tuned = fine_tune(own)
    state = a1111_vae_state(tuned)
    files = {"a1111": root / "vae-ft.safetensors", "prefixed": root / "prefixed.safetensors",
             "ckpt": root / "vae.ckpt", "pt": root / "vae.pt", "diffusers-file": root / "diffusers.safetensors",
             "folder": root / "vae-folder"}
    save_file(state, str(files["a1111"]))
    save_file({VAE_PREFIX + key: value for key, value in state.items()}, str(files["prefixed"]))
    torch.save({"state_dict": {**state, "model_ema.decay": torch.tensor(0.999)}, "global_step": 840000}, files["ckpt"])
    torch.save(state, files["pt"])
    save_file({key: value.contiguous() for key, value in tuned.state_dict().items()}, str(files["diffusers-file"]))
    tuned.save_pretrained(str(files["folder"]), safe_serialization=True)
    return {"root": root, "own": own, "tuned": tuned, "files": files}


@pytest.mark.parametrize("layout", ["a1111", "prefixed", "ckpt", "pt", "diffusers-file", "folder"])
def test_every_layout_loads_the_same_weights(world, layout):
    loaded = load_vae(world["files"][layout], Family.SD1)
    expected = world["tuned"].state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_a_fine_tune_passes_the_check_and_replaces_the_vae(world):
    components = tiny_components(Family.SD1, seed=0)
    components.vae.to(torch.bfloat16)
    events = []
    use_external_vae(components, world["files"]["a1111"], events.append)
    assert components.vae.dtype == torch.bfloat16, "the external VAE takes the dtype of the one it replaces"
    assert not any(p.requires_grad for p in components.vae.parameters())
    texts = [e.text for e in events if isinstance(e, Message)]
    assert len(texts) == 1 and "vae-ft.safetensors" in texts[0] and "correlation" in texts[0]


def job_messages(events):
    return [e.text for e in events if isinstance(e, Message)]


def test_a_job_encodes_with_the_external_vae_and_records_it(world, tmp_path):
    root, cache = world["root"], tmp_path / "cache"
    events = []
    config = tiny_job(root, model_vae=str(world["files"]["a1111"]), latent_cache_dir=str(cache), train_iterations=1)
    result = run_job(config, output_dir=tmp_path / "out", report=events.append)
    assert any("VAE: " in text and "vae-ft.safetensors" in text for text in job_messages(events))
    assert load_lora_metadata(result.path)["ss_vae_name"] == "vae-ft.safetensors"

    # The latents the job cached are the external VAE's encoding, not the baked VAE's.
    image = root / "images" / "00_0.png"
    pixels = image_to_tensor(load_image(image).fit(64, 64).image)[None]
    external_mean, _ = encode_distributions(world["tuned"], pixels)
    baked_mean, _ = encode_distributions(world["own"], pixels)
    cache_key = LatentCache.for_vae(cache, world["tuned"]).key(file_digest(image), (64, 64), mirrored=False)
    cached_mean = load_file(str(cache / f"{cache_key}.safetensors"))["mean"]
    torch.testing.assert_close(cached_mean, external_mean[0], rtol=1e-4, atol=1e-4)
    assert (cached_mean - baked_mean[0]).abs().max() > 1e-2

    # The model's own VAE reuses none of the external VAE's cached latents.
    events = []
    run_job(tiny_job(root, latent_cache_dir=str(cache), train_iterations=1, save_lora_name="baked"),
            output_dir=tmp_path / "out", report=events.append)
    assert any("latent cache" in text and ": 0 reused" in text for text in job_messages(events))


def load_lora_metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def test_the_cache_fingerprint_changes_with_the_vae(world):
    assert vae_fingerprint(world["tuned"]) != vae_fingerprint(world["own"])
    assert vae_fingerprint(load_vae(world["files"]["folder"], Family.SD1)) == vae_fingerprint(world["tuned"])


@pytest.mark.parametrize("seed", range(5))
def test_the_probe_separates_a_fine_tune_from_another_familys_vae(seed, tmp_path):
    sd1 = tiny_components(Family.SD1, seed=seed).vae
    sdxl = tiny_components(Family.SDXL, seed=seed + 100).vae
    tuned = fine_tune(sd1, seed=seed)
    probe = probe_image()
    latents = {name: vae.encode(probe).latent_dist.mean[0].double().flatten(1) for name, vae in
               {"sd1": sd1, "tuned": tuned, "sdxl": sdxl}.items()}
    assert channel_correlation(latents["tuned"], latents["sd1"]) > 0.95
    assert channel_correlation(latents["sd1"], latents["sdxl"]) < MIN_LATENT_CORRELATION - 0.3
    file = tmp_path / "sd1-vae.safetensors"  # a single file has no scaling_factor: only the probe can tell
    save_file(a1111_vae_state(tuned), str(file))
    with pytest.raises(UserError) as caught:
        check_latent_space(load_vae(file, Family.SDXL), sdxl, Family.SDXL, file)
    assert caught.value.field == "model_vae" and "an SD1/SD2 VAE" in caught.value.message


def test_a_wrong_family_vae_is_refused_before_anything_is_written(world, tmp_path):
    sdxl_model = write_tiny_model("sdxl", "single-file", tmp_path / "xl.safetensors", seed=7)
    config = tiny_job(world["root"], model=str(sdxl_model), model_vae=str(world["files"]["a1111"]))
    with pytest.raises(UserError) as caught:
        run_job(config, output_dir=tmp_path / "out")
    error = caught.value
    assert error.field == "model_vae" and "\n" not in error.message
    assert "sdxl model's own VAE" in error.message and "an SD1/SD2 VAE" in error.message
    assert not any((tmp_path / "out").iterdir()), "nothing is written"


def test_a_folder_with_another_familys_scaling_factor_is_refused(world, tmp_path):
    sdxl_vae = tiny_components(Family.SDXL, seed=0).vae
    sdxl_vae.save_pretrained(str(tmp_path / "xl-vae"), safe_serialization=True)
    external = load_vae(tmp_path / "xl-vae", Family.SD1)
    with pytest.raises(UserError, match=r"scaling_factor 0\.13025 \(as sdxl VAEs use\) on a sd1 model"):
        check_latent_space(external, world["own"], Family.SD1, tmp_path / "xl-vae")


def test_a_model_without_a_usable_vae_accepts_and_says_so(world):
    components = tiny_components(Family.SD1, seed=0)
    with torch.no_grad():
        components.vae.quant_conv.weight.zero_()  # constant latents: nothing to compare with
    events = []
    use_external_vae(components, world["files"]["a1111"], events.append)
    assert [e.level for e in events] == ["warning"] and "unchecked" in events[0].text
    assert torch.equal(components.vae.quant_conv.weight, world["tuned"].quant_conv.weight)


def test_files_that_are_no_vae_are_named(world, tmp_path):
    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(4, 2)}, str(lora))
    embedding = tmp_path / "embedding.safetensors"
    save_file({"emb_params": torch.zeros(2, 768)}, str(embedding))
    whole_folder = tmp_path / "whole"
    write_tiny_model("sd1", "diffusers", whole_folder)
    cases = {lora: "a LoRA, not a VAE", world["root"] / "tiny.safetensors": "a whole Stable Diffusion model",
             embedding: "not a VAE", whole_folder: "a whole diffusers model", tmp_path / "gone.pt": "no such file"}
    for path, words in cases.items():
        with pytest.raises(UserError) as caught:
            load_vae(path, Family.SD1)
        assert caught.value.field == "model_vae" and words in caught.value.message, path


def test_cli_refuses_a_missing_vae_with_one_line(world, tmp_path, capsys):
    code = main(["train", "--model", str(world["root"] / "tiny.safetensors"), "--data", str(world["root"] / "images"),
                 "--output-dir", str(tmp_path / "out"), "--set", f"model_vae={tmp_path / 'nope.safetensors'}"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "model_vae" in lines[0] and "nope.safetensors" in lines[0] and "not found" in lines[0]
    assert not (tmp_path / "out").exists()
