"""Images from a model (and a LoRA) through a stock diffusers pipeline, as users' tools render them."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.utils import is_scipy_available
from PIL import Image, ImageDraw

from traintrain.choices import NoiseScheduler
from traintrain.errors import UserError
from traintrain.models.families import NOISE_SCHEDULE, Family
from traintrain.models.flow_schedule import scheduler_config
from traintrain.models.tokenizers import MAX_LENGTH
from traintrain.models.zimage_text import zimage_class

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


def flow_scheduler(components):
    """The transformer families' flow-matching Euler sampler with the model's own schedule (its folder's
    scheduler config, else its family's: FLUX.1-dev's resolution-dependent shift, schnell unshifted, SD3's
    and Z-Image's fixed 3.0)."""
    return FlowMatchEulerDiscreteScheduler.from_config(scheduler_config(components))


def _no_options(pipe) -> dict:
    return {}


def _flux_options(pipe) -> dict:
    from traintrain.models.flux_text import t5_length

    return {"max_sequence_length": t5_length(pipe.tokenizer_2)}  # T5's length in training


def _sd3_options(pipe) -> dict:
    """T5's length in training; without T5, training puts zeros of CLIP's 77 tokens in its place (the
    pipeline puts zeros of max_sequence_length tokens)."""
    from traintrain.models.sd3_text import t5_length

    return {"max_sequence_length": t5_length(pipe.tokenizer_3) if pipe.text_encoder_3 is not None else MAX_LENGTH}


def _zimage_options(pipe) -> dict:
    from traintrain.models.zimage_text import sequence_length

    return {"max_sequence_length": sequence_length(pipe.tokenizer)}  # Qwen3's padded length in training


@dataclass(frozen=True)
class Recipe:
    """How a family's stock diffusers pipeline is built from our loaded modules, and what its call needs."""

    pipeline: str  # the diffusers class
    denoiser: str  # the argument the denoiser is given as
    text_slots: int  # text_encoder(_2, _3) / tokenizer(_2, _3) arguments; one not loaded (SD3's T5) is None
    call_options: Callable[[Any], dict] = _no_options  # beyond prompt, size, steps and guidance
    negative_prompt: bool = True  # FluxPipeline uses one only for true CFG, which previews do not run
    extra: dict = field(default_factory=dict)


_SD_RECIPE = Recipe("StableDiffusionPipeline", "unet", 1, extra={
    "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False})
RECIPES: dict[Family, Recipe] = {
    Family.SD1: _SD_RECIPE,
    Family.SD2: _SD_RECIPE,
    Family.SDXL: Recipe("StableDiffusionXLPipeline", "unet", 2),
    Family.FLUX: Recipe("FluxPipeline", "transformer", 2, _flux_options, negative_prompt=False),
    Family.SD3: Recipe("StableDiffusion3Pipeline", "transformer", 3, _sd3_options),
    Family.ZIMAGE: Recipe("ZImagePipeline", "transformer", 1, _zimage_options),
}


# The guidance each family's models are usually sampled with: A1111's CFG 7 on SD, the pipelines' defaults on
# SD3 (7) and Z-Image (5), Flux.1-dev's distilled guidance 3.5 (schnell has no guidance input and ignores it).
USUAL_GUIDANCE = {Family.SD1: 7.0, Family.SD2: 7.0, Family.SDXL: 7.0, Family.SD3: 7.0, Family.FLUX: 3.5,
                  Family.ZIMAGE: 5.0}
NO_GUIDANCE = 0.0  # the pipelines run without classifier-free guidance at a scale of 1 or less


def usual_guidance(components) -> float:
    """What previews are sampled with unless `preview_guidance` says otherwise. Z-Image-Turbo is distilled to
    sample without CFG (its card: guidance 0); nothing in its weights tells it from Z-Image, its name does."""
    if components.family is Family.ZIMAGE and "turbo" in Path(components.source).name.lower():
        return NO_GUIDANCE
    return USUAL_GUIDANCE[components.family]


def pipeline_from_components(components, sampler: NoiseScheduler = NoiseScheduler.DDIM):
    """A diffusers pipeline sharing our loaded modules (adapters hooked into them stay active).

    The transformer families render with their own flow-matching sampler (`flow_scheduler`); `sampler`
    chooses among the SD families' samplers. ZImagePipeline is imported only here (not in diffusers 0.31)."""
    family = components.family
    recipe = RECIPES[family]
    if components.spec.flow_matching:
        scheduler = flow_scheduler(components)
    else:
        scheduler = preview_scheduler(sampler, components.v_prediction)
    texts: dict = {}
    for slot in range(recipe.text_slots):
        suffix = f"_{slot + 1}" if slot else ""
        loaded = slot < len(components.text_encoders)
        texts[f"text_encoder{suffix}"] = components.text_encoders[slot] if loaded else None
        texts[f"tokenizer{suffix}"] = components.tokenizers[slot] if loaded else None
    pipeline_class = zimage_class(recipe.pipeline) if family is Family.ZIMAGE else getattr(diffusers, recipe.pipeline)
    return pipeline_class(vae=components.vae, scheduler=scheduler, **{recipe.denoiser: components.denoiser},
                          **texts, **recipe.extra)


def recipe_of(pipe) -> Recipe:
    return next(recipe for recipe in RECIPES.values() if recipe.pipeline == type(pipe).__name__)


def generate(
    pipe, prompts: list[str], size, *, seed: int, steps: int = 20, guidance: float = 3.0, negative_prompt: str = ""
) -> list[Image.Image]:
    """One image per prompt, each from the same seed, so pictures compare across LoRA settings.

    `size` is one number (square) or (height, width). On Flux `guidance` is the distilled model's
    guidance input and the negative prompt is not used; elsewhere it is the classifier-free guidance scale
    (ZImagePipeline's: prediction + scale * (prediction - negative prediction)).
    """
    height, width = (size, size) if isinstance(size, int) else size
    recipe = recipe_of(pipe)
    options = recipe.call_options(pipe)
    if recipe.negative_prompt:
        options["negative_prompt"] = negative_prompt or None
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


def labelled_grid(columns: list[list[Image.Image]], titles: list[str], header: int = 18,
                   row_titles: list[str] | None = None) -> Image.Image:
    """Columns of equally sized images under a title row; with `row_titles`, each row's title (a
    preview's prompt) in a strip on the left, so that a reader can tell the rows apart (iLECO's
    Original from its Target)."""
    cell_w, cell_h = columns[0][0].size
    rows = len(columns[0])
    left = max(ROW_TITLE_MIN_WIDTH, cell_w // 2) if row_titles else 0
    grid = Image.new("RGB", (left + cell_w * len(columns), header + cell_h * rows), "white")
    draw = ImageDraw.Draw(grid)
    for col, (title, images) in enumerate(zip(titles, columns, strict=False)):
        draw.text((left + col * cell_w + 4, 3), title, fill="black")
        for row, image in enumerate(images):
            grid.paste(image.resize((cell_w, cell_h)), (left + col * cell_w, header + row * cell_h))
    for row, text in enumerate(row_titles or []):
        lines = fitted_lines(text or "(empty prompt)", left - 8, cell_h - 6)
        draw.multiline_text((4, header + row * cell_h + 3), "\n".join(lines), fill="black", spacing=2)
    return grid


ROW_TITLE_MIN_WIDTH = 120  # pixels: about 20 characters a line in the default font
CHAR_WIDTH, LINE_HEIGHT = 6, 12  # of the default font, in pixels


def fitted_lines(text: str, width: int, height: int) -> list[str]:
    """`text` wrapped to `width` pixels, cut to the lines that fit `height` ("..." marks a cut)."""
    lines = textwrap.wrap(text, width=max(4, width // CHAR_WIDTH)) or [text]
    fitting = max(1, height // LINE_HEIGHT)
    if len(lines) > fitting:
        lines = lines[:fitting]
        lines[-1] = lines[-1][: max(1, len(lines[-1]) - 3)] + "..."
    return lines
