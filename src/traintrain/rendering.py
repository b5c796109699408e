"""Images from a model (and a LoRA) through a stock diffusers pipeline, as users' tools render them."""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch
from diffusers import (
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import is_scipy_available
from PIL import Image, ImageDraw

from traintrain.choices import NoiseScheduler
from traintrain.errors import UserError
from traintrain.models.families import NOISE_SCHEDULE, SD_FAMILIES, Family

# gen_noise_scheduler -> the diffusers scheduler class and its options (the original's names).
SAMPLERS: dict[NoiseScheduler, tuple[str, dict]] = {
    NoiseScheduler.DDIM: ("DDIMScheduler", {}),
    NoiseScheduler.DDPM: ("DDPMScheduler", {}),
    NoiseScheduler.PNDM: ("PNDMScheduler", {"skip_prk_steps": True}),
    NoiseScheduler.LMS: ("LMSDiscreteScheduler", {}),
    NoiseScheduler.EULER: ("EulerDiscreteScheduler", {}),
    NoiseScheduler.EULER_A: ("EulerAncestralDiscreteScheduler", {}),
    NoiseScheduler.DPM_SOLVER: (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    ),
    NoiseScheduler.DPM_SINGLE: ("DPMSolverSinglestepScheduler", {}),
    NoiseScheduler.HEUN: ("HeunDiscreteScheduler", {}),
    NoiseScheduler.DPM_2: ("KDPM2DiscreteScheduler", {}),
    NoiseScheduler.DPM_2_A: ("KDPM2AncestralDiscreteScheduler", {}),
    NoiseScheduler.DPM_PP_2M: ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    NoiseScheduler.DPM_PP_2M_KARRAS: (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    NoiseScheduler.UNIPC: ("UniPCMultistepScheduler", {}),
}


def check_sampler(sampler: NoiseScheduler) -> None:
    """A sampler whose library is missing fails before training, not at the first preview."""
    if sampler == NoiseScheduler.LMS and not is_scipy_available():
        raise UserError(
            "the LMS sampler needs scipy, which is not installed",
            "install scipy or choose another gen_noise_scheduler",
            field="gen_noise_scheduler",
        )


def preview_scheduler(sampler: NoiseScheduler, v_prediction: bool):
    """The sampler for previews, on the models' noise schedule (DDIM as configured before, else from its config)."""
    base = DDIMScheduler(
        **NOISE_SCHEDULE,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if v_prediction else "epsilon",
    )
    if sampler == NoiseScheduler.DDIM:
        return base
    check_sampler(sampler)
    name, options = SAMPLERS[sampler]
    return getattr(diffusers, name).from_config(base.config, **options)


# The families a stock pipeline renders here (pipeline_from_components).
PIPELINE_FAMILIES = (*SD_FAMILIES, Family.FLUX)


def pipeline_from_components(components, sampler: NoiseScheduler = NoiseScheduler.DDIM):
    """A diffusers pipeline sharing our loaded modules (adapters hooked into them stay active).

    Flux renders with FluxPipeline and its own flow-matching Euler sampler (the family's bundled
    scheduler config, resolution-dependent shift); `sampler` chooses among the SD families' samplers."""
    if components.family is Family.FLUX:
        from traintrain.models.loading import config_template

        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(config_template(Family.FLUX, "scheduler")),
            vae=components.vae,
            text_encoder=components.text_encoders[0],
            tokenizer=components.tokenizers[0],
            text_encoder_2=components.text_encoders[1],
            tokenizer_2=components.tokenizers[1],
            transformer=components.transformer,
        )
    scheduler = preview_scheduler(sampler, components.v_prediction)
    if components.family == Family.SDXL:
        return StableDiffusionXLPipeline(
            vae=components.vae,
            text_encoder=components.text_encoders[0],
            text_encoder_2=components.text_encoders[1],
            tokenizer=components.tokenizers[0],
            tokenizer_2=components.tokenizers[1],
            unet=components.unet,
            scheduler=scheduler,
        )
    return StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoders[0],
        tokenizer=components.tokenizers[0],
        unet=components.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_pipeline(model: Path, *, tokenizer_dir: str | None = None):
    """A pipeline on a model loaded offline from a file or folder."""
    from traintrain.models.loading import load_model

    return pipeline_from_components(load_model(str(model), tokenizer_dir=tokenizer_dir))


def generate(
    pipe, prompts: list[str], size, *, seed: int, steps: int = 20, guidance: float = 3.0, negative_prompt: str = ""
) -> list[Image.Image]:
    """One image per prompt, each from the same seed, so pictures compare across LoRA settings.

    `size` is one number (square) or (height, width). On Flux `guidance` is the distilled model's
    guidance input and the negative prompt is not used (FluxPipeline only uses it for true CFG).
    """
    height, width = (size, size) if isinstance(size, int) else size
    if isinstance(pipe, FluxPipeline):
        from traintrain.models.flux_text import t5_length

        options: dict = {"max_sequence_length": t5_length(pipe.tokenizer_2)}  # T5's length in training
    else:
        options = {"negative_prompt": negative_prompt or None}
    images = []
    for prompt in prompts:
        generator = torch.Generator().manual_seed(seed)
        result = pipe(
            prompt,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            **options,
        )
        images.append(result.images[0])
    return images


def labelled_grid(columns: list[list[Image.Image]], titles: list[str], header: int = 18) -> Image.Image:
    """Columns of equally sized images under a title row."""
    cell_w, cell_h = columns[0][0].size
    rows = len(columns[0])
    grid = Image.new("RGB", (cell_w * len(columns), header + cell_h * rows), "white")
    draw = ImageDraw.Draw(grid)
    for col, (title, images) in enumerate(zip(titles, columns, strict=False)):
        draw.text((col * cell_w + 4, 3), title, fill="black")
        for row, image in enumerate(images):
            grid.paste(image.resize((cell_w, cell_h)), (col * cell_w, header + row * cell_h))
    return grid
