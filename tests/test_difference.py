"""Difference (copy machine): the copier learns the Original; the difference LoRA on top of it
moves the model's denoised estimate of a noisy Original toward the Target."""

import pytest
import torch
from PIL import Image, ImageDraw

from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.jobs.runner import run_job
from traintrain.models.tiny import write_tiny_model
from traintrain.networks.kohya_format import load_lora
from traintrain.training.runtime import noise_scheduler


def circle(path, color, size=(64, 64)):
    image = Image.new("RGB", size, (235, 235, 225))
    ImageDraw.Draw(image).ellipse((14, 14, size[0] - 14, size[1] - 14), fill=color)
    image.save(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("difference")
    model = write_tiny_model("sd1", "single-file", root / "tiny.safetensors")
    original = circle(root / "open.png", (200, 40, 40))
    target = circle(root / "closed.png", (40, 60, 200))
    return root, model, original, target


def difference_config(setup, **extra):
    root, model, original, target = setup
    values = dict(
        mode="Difference", model=str(model), original_image=str(original), target_image=str(target),
        network_rank=4, network_alpha=4, train_iterations=150, train_learning_rate=5e-3, train_batch_size=2,
        image_size=[64, 64], image_buckets_step=64, image_min_length=64, train_model_precision="fp32",
        save_precision="fp32", train_seed=5, save_lora_name="diff", diff_save_1st_pass=True,
    )
    values.update(extra)
    return TrainConfig(**values)


def probe(components, latents, cond, timesteps=(200, 400, 600, 800)):
    """Denoised estimates x0 of a noisy latent, with fixed noise, at several timesteps."""
    scheduler = noise_scheduler(False)
    generator = torch.Generator().manual_seed(77)
    estimates = []
    with torch.no_grad():
        for t in timesteps:
            noise = torch.randn(latents.shape, generator=generator)
            ts = torch.full((latents.shape[0],), t)
            noisy = scheduler.add_noise(latents, noise, ts)
            eps = components.unet(noisy, ts, encoder_hidden_states=cond.hidden.expand(latents.shape[0], -1, -1)).sample
            a = scheduler.alphas_cumprod[t]
            estimates.append(((noisy - (1 - a).sqrt() * eps) / a.sqrt(), noise, eps))
    return estimates


@pytest.fixture(scope="module")
def trained(setup):
    root = setup[0]
    config = difference_config(setup)
    result = run_job(config, output_dir=root / "out")
    return config, result


def test_copier_learns_the_original(trained):
    _, result = trained
    d = result.outcome.extras
    assert d["copier_losses"][-20:] and sum(d["copier_losses"][-20:]) / 20 < sum(d["copier_losses"][:20]) / 20


def test_difference_moves_denoised_original_toward_target(trained):
    config, result = trained
    d = result.outcome.extras
    from traintrain.models.loading import load_model
    from traintrain.networks.network import AdapterNetwork
    from traintrain.modes.common import prompt_only_spec

    sample = d["samples"][0]
    original, target = sample.original[None], sample.target[None]
    components = load_model(config.model)
    copier = AdapterNetwork(components, prompt_only_spec(config))
    copier.load_tensors(load_lora(result.path.parent / "diff_copy.safetensors")[0])
    copier.apply()
    difference = AdapterNetwork(components, prompt_only_spec(config.for_second_pass()))
    difference.load_tensors(load_lora(result.path)[0])
    difference.apply()
    cond = d["conditioning"]

    difference.set_enabled(False)
    copier_only = probe(components, original, cond)
    difference.set_enabled(True)
    stacked = probe(components, original, cond)
    distance = lambda estimates: sum(torch.mean((x0 - target) ** 2).item() for x0, _, _ in estimates)
    before, after = distance(copier_only), distance(stacked)
    print(f"Difference: distance of denoised Original to Target {before:.4f} (copier) -> {after:.4f} (copier+difference)")
    assert after < 0.9 * before

    # The copier alone reproduces the Original better than the bare model does.
    copier.set_enabled(False)
    difference.set_enabled(False)
    bare = probe(components, original, cond)
    to_original = lambda estimates: sum(torch.mean((x0 - original) ** 2).item() for x0, _, _ in estimates)
    print(f"copier: distance to Original {to_original(bare):.4f} (bare) -> {to_original(copier_only):.4f}")
    assert to_original(copier_only) < to_original(bare)


def test_loaded_copier_equals_trained_copier(setup, trained, tmp_path):
    config, result = trained
    copy_file = result.path.parent / "diff_copy.safetensors"
    loaded = run_job(
        config.with_values(diff_load_1st_pass=str(copy_file), diff_save_1st_pass=False, save_lora_name="again", train_iterations=1),
        output_dir=tmp_path,
    )
    trained_copier = result.outcome.copier.tensors_for_save(torch.float32)
    loaded_copier = loaded.outcome.copier.tensors_for_save(torch.float32)
    assert loaded.outcome.extras["copier_losses"] == []  # really loaded, not trained from zero
    assert all(torch.equal(trained_copier[k], loaded_copier[k]) for k in trained_copier)


def test_second_pass_settings_and_first_pass_only(setup, tmp_path):
    config = difference_config(
        setup, train_iterations=3, use_2nd_pass_settings=True, second_pass={"network_rank": 2, "train_iterations": 2},
        diff_save_1st_pass=False,
    )
    result = run_job(config, output_dir=tmp_path)
    tensors, meta = load_lora(result.path)
    assert meta["ss_network_dim"] == "2" and len(result.losses) == 2
    assert not (tmp_path / "diff_copy.safetensors").exists()
    only = run_job(config.with_values(diff_1st_pass_only=True, save_lora_name="copier"), output_dir=tmp_path)
    assert load_lora(only.path)[1]["ss_network_dim"] == "4" and len(only.losses) == 3


def test_images_of_different_sizes_are_refused(setup, tmp_path):
    root = setup[0]
    small = circle(tmp_path / "small.png", (0, 0, 0), size=(48, 64))
    with pytest.raises(UserError, match=r"64x64.*48x64|is 64x64 but target image .* is 48x64"):
        run_job(difference_config(setup, target_image=str(small)), output_dir=tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))


def test_difference_runs_on_sdxl(setup, tmp_path):
    model = write_tiny_model("sdxl", "single-file", tmp_path / "xl.safetensors")
    config = difference_config(setup, model=str(model), train_iterations=2, diff_save_1st_pass=True)
    result = run_job(config, output_dir=tmp_path)
    tensors, meta = load_lora(result.path)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and any(k.startswith("lora_unet_input_blocks_") for k in tensors)
    assert (tmp_path / "diff_copy.safetensors").is_file()
