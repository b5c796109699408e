"""Everything that can fail later, checked before the model loads: a typo or a full disk costs
seconds, not an hour-long run that dies at its first save.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from traintrain.choices import TEXT_ENCODER_BLOCK
from traintrain.errors import OUTPUT_DIR, UserError
from traintrain.models.loading import WeightShapes, read_weight_shapes
from traintrain.training.optimizers import check_optimizer
from traintrain.training.run_logs import check_logging
from traintrain.training.saving import OutputPlan, lora_size_bound

CSV_BYTES_PER_STEP = 128


def check_training_options(config) -> None:
    check_optimizer(config)
    check_logging(config)


def check_resources(config, mode, plan: OutputPlan, file_names: list[str]) -> None:
    """Model headers, the mode's images, folders and disk space; then clear temporaries of killed runs."""
    shapes = read_weight_shapes(config.model)
    mode.check_images(config)
    check_latent_cache_dir(config)
    check_disk_space(config, plan, shapes, file_names)
    plan.remove_stale_temps(file_names)


def check_latent_cache_dir(config) -> None:
    if not config.latent_cache_dir:
        return
    folder = Path(config.latent_cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(
            f"latent_cache_dir {folder} is not a writable folder ({error.strerror}); choose another"
        ) from None


def check_disk_space(config, plan: OutputPlan, shapes: WeightShapes, file_names: list[str]) -> None:
    """Room for every file the run saves, each at its upper-bound size (see lora_size_bound)."""
    weights = shapes.unet + (shapes.text_encoders if TEXT_ENCODER_BLOCK in config.network_blocks else [])
    loras = sum(name.endswith(".safetensors") for name in file_names)
    height, width = config.image_size
    prompts = max(2, len([p for p in re.split(r"[;\n]", config.preview_prompts) if p.strip()]))
    preview = 3 * prompts * height * width * 3 + (1 << 20)  # three multipliers, uncompressed RGB
    needed = loras * lora_size_bound(weights, config) + (len(file_names) - loras) * preview
    if config.logging_save_csv:
        needed += CSV_BYTES_PER_STEP * config.train_iterations * 2  # Difference logs two passes
    free = shutil.disk_usage(_existing(plan.directory)).free
    if needed > free:
        raise UserError(
            f"not enough disk space in {plan.directory}: this run saves {len(file_names)} file(s) needing up to "
            f"{_size(needed)}, but only {_size(free)} is free",
            "free some space or choose another output folder",
            field=OUTPUT_DIR,
        )


def _existing(folder: Path) -> Path:
    """The folder, or its nearest existing parent (the output folder is created only after the checks)."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"
