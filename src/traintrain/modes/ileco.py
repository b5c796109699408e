"""iLECO (instant LECO): move concept A (Original prompt) toward B (Target prompt), or erase A.

No images: one latent z ~ N(0, I) is drawn once. Each step the frozen model's prediction for the
Target prompt is the target for the adapted model's prediction for the Original prompt, at a
random timestep. An empty Target prompt is the empty-prompt conditioning, which erases A.
"""

from __future__ import annotations

import dataclasses

import torch

from traintrain.errors import UserError
from traintrain.models.encoding import encode_prompts
from traintrain.modes.common import (
    build_network,
    fixed_conditionings,
    prompt_only_spec,
    repeat_conditioning,
    train_result_network,
)
from traintrain.modes.denoising import training_timesteps, unet_predict
from traintrain.modes.registry import ModeOutcome, TrainingMode, register
from traintrain.training.loss import denoising_loss


def ileco_latent(config, components, generator: torch.Generator) -> torch.Tensor:
    height, width = config.image_size  # height,width order is kept
    factor = components.latent_factor
    return torch.randn(config.train_batch_size, components.unet.config.in_channels, height // factor, width // factor,
                       generator=generator)


def ileco_spec(config):
    """UNet only, or with network_train_text_encoder the text encoder too (BASE added if not selected)."""
    spec = prompt_only_spec(config)
    if config.network_train_text_encoder:
        spec = dataclasses.replace(spec, blocks=["BASE"] + spec.blocks)
    return spec


def ileco_loss_fn(components, network, config, run, original, target, latent):
    """The step loss, also used by tests to measure the effect on held-out noise.

    With network_train_text_encoder the Original prompt is encoded every step with the text
    encoder's LoRA on (`original` is then unused); the target stays the frozen model's.
    """
    scheduler = run.noise_scheduler
    batch = latent.shape[0]
    original_b, target_b = repeat_conditioning(original, batch), repeat_conditioning(target, batch)

    def compute_loss(step: int) -> torch.Tensor:
        timesteps = training_timesteps(
            batch,
            config.train_min_timesteps,
            config.train_max_timesteps,
            run.generator,
            config.train_fixed_timsteps_in_batch,
        )
        adapted_b = original_b
        if config.network_train_text_encoder:
            adapted_b = repeat_conditioning(encode_prompts(components, [config.original_prompt]), batch)
        with torch.no_grad():
            network.set_enabled(False)
            wanted = unet_predict(components, latent, timesteps, target_b)
            network.set_enabled(True)
        prediction = unet_predict(components, latent, timesteps, adapted_b)
        return denoising_loss(
            prediction,
            wanted,
            timesteps.to(prediction.device),
            scheduler.alphas_cumprod,
            snr_gamma=config.train_snr_gamma,
            v_prediction=components.v_prediction,
            loss_function=config.train_loss_function,
        )

    return compute_loss


def train_ileco(config, components, run) -> ModeOutcome:
    network = build_network(components, ileco_spec(config), run, resume=config.network_resume)
    network.set_enabled(False)  # the target is the frozen model's, whatever a resumed text-encoder LoRA holds
    original, target = fixed_conditionings(components, [config.original_prompt, config.target_prompt])
    network.set_enabled(True)
    latent = ileco_latent(config, components, run.generator)
    compute_loss = ileco_loss_fn(components, network, config, run, original, target, latent)
    return train_result_network("iLECO", network, config, compute_loss, components, run)


@register
class ILECOMode(TrainingMode):
    name = "iLECO"
    summary = "from two prompts: turn the Original concept into the Target, or erase it (empty Target)"
    fields = ("original_prompt", "target_prompt", "network_train_text_encoder")
    phases = ("iLECO",)
    order = 1

    def check_inputs(self, config) -> None:
        if not config.original_prompt.strip():
            raise UserError(
                "iLECO needs original_prompt (the concept to change)",
                "target_prompt empty = erase it",
                field="original_prompt",
            )

    def default_preview_prompts(self, config) -> list[str]:
        return [p for p in (config.original_prompt, config.target_prompt) if p.strip()]

    def train(self, config, components, run) -> ModeOutcome:
        return train_ileco(config, components, run)
