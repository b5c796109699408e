"""The files a job will write under its output folder, known before it starts.

With them the job refuses an existing name (unless save_overwrite) and checks the disk has room
before any training, instead of failing at the first periodic save an hour in.
"""

from __future__ import annotations

from traintrain.config import Mode, TrainConfig
from traintrain.modes.previews import preview_prompts


def _every(step: int, iterations: int) -> range:
    """The steps below the last one at which something happens every `step` steps."""
    return range(step, iterations, step) if step else range(0)


def planned_files(config: TrainConfig) -> list[str]:
    """File names (in the output folder) of the LoRA files and preview images the job saves."""
    name = config.output_name
    if config.mode == Mode.DIFFERENCE and config.diff_1st_pass_only:
        files, result = [f"{name}.safetensors"], config
    else:
        result = config.for_second_pass() if config.mode == Mode.DIFFERENCE else config
        files = [f"{name}.safetensors"] + [
            f"{name}_{step}steps.safetensors" for step in _every(result.save_per_steps, result.train_iterations)
        ]
        if config.mode == Mode.DIFFERENCE and config.diff_save_1st_pass:
            files.append(f"{name}_copy.safetensors")
    if preview_prompts(config):
        files.append(f"{name}_preview.png")
        if not (config.mode == Mode.DIFFERENCE and config.diff_1st_pass_only):
            files += [f"{name}_{step}steps_preview.png" for step in _every(result.preview_every_steps, result.train_iterations)]
    return files
