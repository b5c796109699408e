"""The training objective by family, for the modes that compare predictions (iLECO, ADDifT) or train on
images (LoRA, Difference): DDPM denoising on the SD UNets, flow matching on the transformer families
(Flux, SD3: modes/flow_matching.py chooses each one's noise levels and prediction).

The modes keep their algorithm and speak in integer timesteps t in [0, 1000); here t becomes the
UNet's timestep or the transformer's shifted sigma, noise is added by the DDPM schedule or by
x_t = (1 - sigma) * x0 + sigma * noise, and the loss is min-SNR weighted or, for the flow, not.
"""

from __future__ import annotations

import torch

from traintrain.modes.denoising import denoising_step_loss, unet_predict
from traintrain.modes.flow_matching import (
    flow_matching_step_loss,
    flow_noisy,
    flow_sigmas,
    flow_x0,
    transformer_predict,
)
from traintrain.training.distributed import SINGLE, Processes
from traintrain.training.loss import denoising_loss
from traintrain.training.transfer import to_device


def predict(components, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning, config) -> torch.Tensor:
    """The denoiser's output for noisy latents at integer timesteps: the UNet's epsilon (or v), or the
    transformer's flow (noise - x0) at the timesteps' sigmas (Flux.1-dev given config.train_flux_guidance)."""
    if components.spec.flow_matching:
        sigmas = flow_sigmas(components, timesteps, noisy)
        return transformer_predict(components, noisy, sigmas, conditioning, config.train_flux_guidance)
    return unet_predict(components, noisy, timesteps, conditioning)


def add_noise(components, scheduler, latents: torch.Tensor, noise: torch.Tensor,
              timesteps: torch.Tensor) -> torch.Tensor:
    """Cached latents noised to the timesteps, as the family's training step noises them."""
    if components.spec.flow_matching:
        x0 = flow_x0(components, latents)
        return flow_noisy(x0, noise, flow_sigmas(components, timesteps, x0))
    return scheduler.add_noise(latents, noise, timesteps)


def prediction_loss(components, scheduler, prediction: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
                    config, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-sample loss of a prediction against a target on the prediction's device; min-SNR weighting
    (train_snr_gamma) belongs to the DDPM schedule and is not applied to the flow."""
    device = prediction.device
    return denoising_loss(
        prediction, to_device(target, device), to_device(timesteps, device), scheduler.alphas_cumprod,
        snr_gamma=0.0 if components.spec.flow_matching else config.train_snr_gamma,
        v_prediction=components.v_prediction, mask=None if mask is None else to_device(mask, device),
        loss_function=config.train_loss_function,
    )


def image_step_loss(components, scheduler, latents: torch.Tensor, conditioning, config, generator,
                    mask: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                    processes: Processes = SINGLE) -> torch.Tensor:
    """LoRA mode's loss on a batch of cached image latents: denoising_step_loss or flow_matching_step_loss."""
    if components.spec.flow_matching:
        return flow_matching_step_loss(components, latents, conditioning, config, generator, mask, processes,
                                       noise=noise)
    return denoising_step_loss(components, scheduler, latents, conditioning, config, generator, mask, noise=noise,
                               processes=processes)
