"""The denoising step LoRA and Difference modes share: noise latents, predict, compare."""

from __future__ import annotations

import torch

from traintrain.models.families import Family
from traintrain.training.loss import denoising_loss


def unet_predict(components, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning) -> torch.Tensor:
    """UNet output for noisy latents; SDXL also gets pooled text and pixel-size time_ids."""
    unet = components.unet
    param = next(unet.parameters())
    kwargs = {}
    if components.family == Family.SDXL:
        height, width = noisy.shape[-2] * 8, noisy.shape[-1] * 8  # time_ids are in PIXELS
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=param.dtype, device=param.device)
        kwargs["added_cond_kwargs"] = {
            "text_embeds": conditioning.pooled.to(param.device, param.dtype),
            "time_ids": time_ids.repeat(noisy.shape[0], 1),
        }
    return unet(
        noisy.to(param.device, param.dtype), timesteps.to(param.device),
        encoder_hidden_states=conditioning.hidden.to(param.device, param.dtype), **kwargs,
    ).sample


def training_noise(shape, generator, offset: float) -> torch.Tensor:
    """Gaussian noise plus, with an offset, one shift per sample and channel: lets a LoRA learn overall brightness."""
    noise = torch.randn(shape, generator=generator)
    if offset > 0:
        noise = noise + offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    return noise


def denoising_step_loss(components, scheduler, latents, conditioning, config, generator, mask=None) -> torch.Tensor:
    """LoRA loss: t ~ U[min_t, max_t), x_t = add_noise(x0, eps, t), target eps (or v), min-SNR weighted."""
    batch = latents.shape[0]
    noise = training_noise(latents.shape, generator, config.train_noise_offset)
    timesteps = torch.randint(
        config.train_min_timesteps, config.train_max_timesteps, (batch,), generator=generator
    )
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if components.v_prediction:
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = unet_predict(components, noisy, timesteps, conditioning)
    device = prediction.device
    return denoising_loss(
        prediction, target.to(device), timesteps.to(device), scheduler.alphas_cumprod,
        snr_gamma=config.train_snr_gamma, v_prediction=components.v_prediction,
        mask=None if mask is None else mask.to(device), loss_function=config.train_loss_function,
    )
