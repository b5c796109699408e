"""LoRA training end to end on a tiny single-file model: loss falls, exact steps, file and metadata."""

import json

import pytest
import torch
from PIL import Image

from sample_images import write_demo_images
from traintrain.config import TrainConfig
from traintrain.data.dataset import encode_latents, image_to_tensor
from traintrain.jobs.runner import run_job
from traintrain.models.encoding import encode_prompts
from traintrain.models.loading import load_model
from traintrain.models.tiny import write_tiny_model
from traintrain.networks.kohya_format import load_lora
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from traintrain.training.events import Progress
from traintrain.training.runtime import noise_scheduler


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model = write_tiny_model("sd1", "single-file", root / "tiny.safetensors")
    images = write_demo_images(root / "images")
    config = TrainConfig(
        model=str(model), lora_data_directory=str(root / "images"), lora_trigger_word="ttdemo",
        network_rank=4, network_alpha=4, train_iterations=150, train_batch_size=2, train_learning_rate=3e-3,
        image_size=[64, 64], image_buckets_step=64, image_min_length=64, train_model_precision="fp32",
        save_precision="fp32", train_seed=7, save_lora_name="tiny_lora",
    )
    events = []
    result = run_job(config, output_dir=root / "out", report=events.append)
    return config, result, events, images


def held_out_loss(config, lora_path, images, use_lora):
    components = load_model(config.model)
    for part in [components.unet, components.vae, *components.text_encoders]:
        part.requires_grad_(False)
    network = None
    if use_lora:
        tensors, _ = load_lora(lora_path)
        network = AdapterNetwork(components, NetworkSpec.from_config(config))
        network.load_tensors(tensors)
        network.apply()
    scheduler = noise_scheduler(False)
    generator = torch.Generator().manual_seed(123)
    pixels = torch.stack([image_to_tensor(Image.open(p).convert("RGB").resize((64, 64))) for p, _ in images])
    latents = encode_latents(components.vae, pixels, 0.18215, generator)
    cond = encode_prompts(components, [caption for _, caption in images])
    total = 0.0
    with torch.no_grad():
        for t in (100, 300, 500, 700, 900):
            noise = torch.randn(latents.shape, generator=generator)
            timesteps = torch.full((latents.shape[0],), t)
            pred = components.unet(scheduler.add_noise(latents, noise, timesteps), timesteps, encoder_hidden_states=cond.hidden).sample
            total += torch.mean((pred - noise) ** 2).item()
    return total / 5


def test_training_lowers_held_out_loss(trained):
    config, result, _, images = trained
    before = held_out_loss(config, result.path, images, use_lora=False)
    after = held_out_loss(config, result.path, images, use_lora=True)
    print("held-out loss", before, after)
    assert after < 0.8 * before, (before, after)


def test_exactly_train_iterations_steps_with_progress(trained):
    config, result, events, _ = trained
    progress = [e for e in events if isinstance(e, Progress)]
    assert len(result.losses) == 150 and [e.step for e in progress] == list(range(1, 151))
    assert progress[-1].total == 150 and progress[-1].eta == 0 and progress[0].learning_rate > 0


def test_saved_file_is_kohya_with_metadata(trained):
    _, result, _, _ = trained
    assert result.path.name == "tiny_lora.safetensors"
    tensors, meta = load_lora(result.path)
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in tensors)
    assert any(k.startswith("lora_unet_down_blocks_0_attentions_0_") for k in tensors)
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_max_train_steps"] == "150"
    assert meta["ss_seed"] == "7" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert json.loads(meta["ss_tag_frequency"])["images"]["ttdemo"] == 8


def test_same_seed_same_weights(trained, tmp_path):
    """Two runs of the job's settings cut to 20 steps (five epochs of its 8 images: shuffles, noise, timesteps
    and every update drawn again), not a third 150-step run."""
    config = trained[0].with_values(train_iterations=20)
    first, _ = load_lora(run_job(config, output_dir=tmp_path / "first").path)
    second, _ = load_lora(run_job(config.with_values(save_lora_name="again"), output_dir=tmp_path).path)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert any(first[k].abs().sum() > 0 for k in first if "lora_up" in k)  # the runs trained
