"""A tiny model, a few images and a fast LoRA job config, shared by the training-option tests."""

from __future__ import annotations

from pathlib import Path

from sample_images import write_demo_images
from traintrain.config import TrainConfig
from traintrain.models.tiny import write_tiny_model


def tiny_job(root: Path, **values) -> TrainConfig:
    """A LoRA job of a few steps at 64x64 on a tiny SD1 model written under `root` (once)."""
    model = root / "tiny.safetensors"
    if not model.exists():
        write_tiny_model("sd1", "single-file", model)
        write_demo_images(root / "images")
    settings = dict(
        model=str(model), lora_data_directory=str(root / "images"), lora_trigger_word="tt",
        network_rank=2, network_alpha=2, train_iterations=3, train_batch_size=2, train_learning_rate=1e-3,
        image_size=[64, 64], image_buckets_step=64, image_min_length=64, train_model_precision="fp32",
        save_precision="fp32", train_seed=5, save_lora_name="job",
    )
    settings.update(values)
    return TrainConfig(**settings)
