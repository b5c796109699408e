"""Images from a model (and a LoRA) through a stock diffusers pipeline, as users' tools render them."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from traintrain.models.families import NOISE_SCHEDULE, Family


def build_pipeline(model: Path, *, tokenizer_dir: str | None = None):
    """A diffusers pipeline on our offline-loaded components (SD1/SD2)."""
    from traintrain.models.loading import load_model

    components = load_model(str(model), tokenizer_dir=tokenizer_dir)
    if components.family == Family.SDXL:
        raise NotImplementedError("SDXL previews arrive with the SDXL networks work")
    scheduler = DDIMScheduler(
        **NOISE_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        prediction_type="v_prediction" if components.v_prediction else "epsilon",
    )
    return StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoders[0], tokenizer=components.tokenizers[0],
        unet=components.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def generate(pipe, prompts: list[str], size: int, *, seed: int, steps: int = 20, guidance: float = 3.0,
             negative_prompt: str = ""):
    """One image per prompt, each from the same seed, so pictures compare across LoRA settings."""
    images = []
    for prompt in prompts:
        generator = torch.Generator().manual_seed(seed)
        result = pipe(
            prompt, negative_prompt=negative_prompt or None, height=size, width=size, num_inference_steps=steps,
            guidance_scale=guidance, generator=generator,
        )
        images.append(result.images[0])
    return images
