"""iLECO (instant LECO): move concept A (Original prompt) toward B (Target prompt), or erase A.

No images: one latent z ~ N(0, I) is drawn once. Each step the frozen model's prediction for the
Target prompt is the target for the adapted model's prediction for the Original prompt, at a
random timestep. An empty Target prompt is the empty-prompt conditioning, which erases A.
"""

from __future__ import annotations

import torch

from traintrain.modes.common import build_network, fixed_conditionings, prompt_only_spec, repeat_conditioning, train_result_network
from traintrain.modes.denoising import unet_predict
from traintrain.training.loss import denoising_loss


def ileco_latent(config, generator: torch.Generator) -> torch.Tensor:
    height, width = config.image_size  # height,width order is kept
    return torch.randn(config.train_batch_size, 4, height // 8, width // 8, generator=generator)


def ileco_loss_fn(components, network, config, run, original, target, latent):
    """The step loss, also used by tests to measure the effect on held-out noise."""
    scheduler = run.noise_scheduler
    batch = latent.shape[0]
    original_b, target_b = repeat_conditioning(original, batch), repeat_conditioning(target, batch)

    def compute_loss(step: int) -> torch.Tensor:
        timesteps = torch.randint(config.train_min_timesteps, config.train_max_timesteps, (batch,), generator=run.generator)
        with torch.no_grad():
            network.set_enabled(False)
            wanted = unet_predict(components, latent, timesteps, target_b)
            network.set_enabled(True)
        prediction = unet_predict(components, latent, timesteps, original_b)
        return denoising_loss(
            prediction, wanted, timesteps.to(prediction.device), scheduler.alphas_cumprod,
            snr_gamma=config.train_snr_gamma, v_prediction=components.v_prediction,
            loss_function=config.train_loss_function,
        )

    return compute_loss


def train_ileco(config, components, run) -> dict:
    network = build_network(components, prompt_only_spec(config), run, resume=config.network_resume)
    original, target = fixed_conditionings(components, [config.original_prompt, config.target_prompt])
    latent = ileco_latent(config, run.generator)
    compute_loss = ileco_loss_fn(components, network, config, run, original, target, latent)
    return train_result_network("iLECO", network, config, compute_loss, components, run)
