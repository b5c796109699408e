"""Preview images after training: each prompt at LoRA multipliers -1, 0 and +1, one PNG grid (a row per
prompt, titled with it).

Rendered by each family's stock diffusers pipeline (StableDiffusion(XL)Pipeline, FluxPipeline,
StableDiffusion3Pipeline, ZImagePipeline: rendering.py) on the training model with the adapter hooked in,
so the pictures show what users will see at those strengths.
Difference's copier is switched off: the saved file is the difference LoRA alone.
"""

from __future__ import annotations

from pathlib import Path

import torch

from traintrain.fileio import atomic_path
from traintrain.modes.registry import get_mode
from traintrain.rendering import generate, labelled_grid, pipeline_from_components, usual_guidance
from traintrain.training.events import PREVIEW, Message, Written

MULTIPLIERS = (-1.0, 0.0, 1.0)


def preview_prompts(config) -> list[str]:
    """The user's preview prompts, else the mode's default ones (iLECO: its Original and Target)."""
    return get_mode(config.mode).preview_prompts(config)


@torch.no_grad()
def render_previews(config, components, network, copier, run, suffix: str = "") -> Path:
    """`copier` (Difference's frozen pass-1 network, or None) is switched off while rendering."""
    prompts = preview_prompts(config)
    target = run.writer.plan.directory / f"{run.writer.plan.name}{suffix}_preview.png"
    if not run.processes.main:  # data-parallel: the main process renders them
        return target
    run.report(Message(f"rendering previews for {len(prompts)} prompt(s) at multipliers -1, 0, +1"))
    denoiser = components.denoiser
    was_training = denoiser.training
    denoiser.eval()
    if copier is not None:
        copier.set_enabled(False)
    try:
        pipe = pipeline_from_components(components, config.gen_noise_scheduler)
        pipe.set_progress_bar_config(disable=True)
        columns = []
        for multiplier in MULTIPLIERS:
            network.set_multiplier(multiplier)
            columns.append(generate(
                pipe, prompts, tuple(config.image_size), seed=run.seed, steps=config.preview_sampling_steps,
                guidance=config.preview_guidance or usual_guidance(components),
                negative_prompt=config.negative_prompt,
            ))
    finally:
        network.set_multiplier(1.0)
        if copier is not None:
            copier.set_enabled(True)
        denoiser.train(was_training)
    grid = labelled_grid(columns, [f"LoRA x{m:+g}" for m in MULTIPLIERS], row_titles=prompts)
    with atomic_path(target) as tmp:
        grid.save(tmp, format="PNG")
    run.report(Written(str(target), PREVIEW))
    return target
