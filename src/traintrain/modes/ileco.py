"""iLECO (instant LECO): move concept A (Original prompt) toward B (Target prompt), or erase A.

No images: latents z ~ N(0, I). Each step the frozen model's prediction for the Target prompt is
the target for the adapted model's prediction for the Original prompt, at a random timestep. An
empty Target prompt is the empty-prompt conditioning, which erases A. On a flow-matching family
(Flux) z is the noisy latent at the timestep's sigma and the predictions are the transformer's
flow (modes/objective.py); the loss is then not SNR-weighted.

The original draws one latent once and reuses it every step; `ileco_latent` also offers a fresh
draw each step (the default: measured on the toy world, see README) and a small pool drawn once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from traintrain.choices import ILECOLatent
from traintrain.errors import UserError
from traintrain.models.encoding import encode_prompts, encode_t5
from traintrain.models.families import Family
from traintrain.modes.common import (
    build_network,
    fixed_conditionings,
    prompt_only_spec,
    repeat_conditioning,
    report_qwen3_not_trained,
    train_result_network,
)
from traintrain.modes.denoising import training_timesteps
from traintrain.modes.objective import predict, prediction_loss
from traintrain.modes.registry import ModeOutcome, TrainingMode, register
from traintrain.training.events import Message


def ileco_latent(config, components, generator: torch.Generator) -> torch.Tensor:
    height, width = (side // components.latent_factor for side in config.image_size)  # height,width order is kept
    if components.spec.flow_matching:  # the transformer packs 2x2 latent pixels into a token
        height, width = max(2, height - height % 2), max(2, width - width % 2)
    return torch.randn(config.train_batch_size, components.vae.config.latent_channels, height, width,
                       generator=generator)


LATENT_POOL = 16  # latents in the pool of ileco_latent=pool


def latent_source(config, components, generator: torch.Generator) -> Callable[[], torch.Tensor]:
    """The step's latents, as `ileco_latent` asks: each call is one step's batch. Pool and once are
    drawn here, at the start; fresh ones and the pool's picks come from `generator` step by step."""
    if config.ileco_latent is ILECOLatent.FRESH:
        return lambda: ileco_latent(config, components, generator)
    if config.ileco_latent is ILECOLatent.ONCE:
        latent = ileco_latent(config, components, generator)
        return lambda: latent
    pool = torch.cat([ileco_latent(config.with_values(train_batch_size=1), components, generator)
                      for _ in range(LATENT_POOL)])
    return lambda: pool[torch.randint(LATENT_POOL, (config.train_batch_size,), generator=generator)]


def ileco_spec(config):
    """UNet only, or with network_train_text_encoder the text encoder too (BASE added if not selected)."""
    spec = prompt_only_spec(config)
    if config.network_train_text_encoder:
        spec = dataclasses.replace(spec, blocks=["BASE"] + spec.blocks)
    return spec


def ileco_loss_fn(components, network, config, run, original, target, latents: Callable[[], torch.Tensor]):
    """The step loss, also used by tests to measure the effect on held-out noise.

    With network_train_text_encoder the Original prompt is encoded every step with the text
    encoder's LoRA on (`original` is then unused; on Flux / SD3 T5's part is encoded once, here); the
    target stays the frozen model's.
    """
    scheduler = run.noise_scheduler
    encode_each_step = config.network_train_text_encoder and len(network.text_encoder_modules) > 0
    with torch.no_grad():
        original_t5 = encode_t5(components, [config.original_prompt]) if encode_each_step else None
    batch = config.train_batch_size
    shard = run.processes.shard  # data-parallel: the UNet runs on this process's share of the batch
    original_b, target_b = (repeat_conditioning(c, batch).map(shard) for c in (original, target))

    def compute_loss(step: int) -> torch.Tensor:
        latent = latents()
        timesteps = training_timesteps(
            batch,
            config.train_min_timesteps,
            config.train_max_timesteps,
            run.generator,
            config.train_fixed_timsteps_in_batch,
        )
        latent, timesteps = shard(latent), shard(timesteps)
        adapted_b = original_b
        if encode_each_step:
            adapted_b = repeat_conditioning(encode_prompts(components, [config.original_prompt], original_t5),
                                            len(timesteps))
        with torch.no_grad():
            network.set_enabled(False)
            wanted = predict(components, latent, timesteps, target_b, config)
            network.set_enabled(True)
        prediction = predict(components, latent, timesteps, adapted_b, config)
        loss = prediction_loss(components, scheduler, prediction, wanted, timesteps, config)
        return run.processes.weigh(loss, batch)

    return compute_loss


def train_ileco(config, components, run) -> ModeOutcome:
    network = build_network(components, ileco_spec(config), run, resume=config.network_resume)
    if config.network_train_text_encoder and components.family is Family.ZIMAGE:
        report_qwen3_not_trained(run, "network_train_text_encoder")
    elif config.network_train_text_encoder and not len(network.text_encoder_modules):
        run.report(Message(  # as in the original, nothing of the text encoder is trained then: say so
            f"network_train_text_encoder: the text encoder has no cross-attention, so with network_element="
            f"{config.network_element.value} nothing of it is trained; choose Full or SelfAttention to train it",
            level="warning",
        ))
    network.set_enabled(False)  # the target is the frozen model's, whatever a resumed text-encoder LoRA holds
    original, target = fixed_conditionings(components, [config.original_prompt, config.target_prompt])
    network.set_enabled(True)
    latents = latent_source(config, components, run.generator)
    compute_loss = ileco_loss_fn(components, network, config, run, original, target, latents)
    return train_result_network("iLECO", network, config, compute_loss, components, run)


@register
class ILECOMode(TrainingMode):
    frozen_passes = 1  # the target: the frozen model's prediction
    name = "iLECO"
    summary = "from two prompts: turn the Original concept into the Target, or erase it (empty Target)"
    fields = ("original_prompt", "target_prompt", "network_train_text_encoder", "ileco_latent")
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
