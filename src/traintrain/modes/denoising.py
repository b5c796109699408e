"""The denoising step LoRA and Difference modes share: noise latents, predict, compare."""

from __future__ import annotations

import torch

from traintrain.models.families import Family
from traintrain.training.distributed import SINGLE, Processes
from traintrain.training.loss import denoising_loss
from traintrain.training.transfer import to_device


def unet_predict(components, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning) -> torch.Tensor:
    """UNet output for noisy latents; SDXL also gets pooled text and pixel-size time_ids."""
    unet = components.unet
    param = next(unet.parameters())
    kwargs = {}
    if components.family == Family.SDXL:
        factor = components.latent_factor
        height, width = noisy.shape[-2] * factor, noisy.shape[-1] * factor  # time_ids are in PIXELS
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=param.dtype)
        kwargs["added_cond_kwargs"] = {
            "text_embeds": to_device(conditioning.pooled, param.device, param.dtype),
            "time_ids": to_device(time_ids.repeat(noisy.shape[0], 1), param.device),
        }
    return unet(
        to_device(noisy, param.device, param.dtype), to_device(timesteps, param.device),
        encoder_hidden_states=to_device(conditioning.hidden, param.device, param.dtype), **kwargs,
    ).sample


def training_noise(shape, generator, offset: float) -> torch.Tensor:
    """Gaussian noise plus, with an offset, one shift per sample and channel: lets a LoRA learn overall brightness."""
    noise = torch.randn(shape, generator=generator)
    if offset > 0:
        noise = noise + offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    return noise


class FixedNoise:
    """`diff_use_fixed_noise`: one noise per batch shape, drawn once from the seed and reused every step.

    Drawn from its own generator seeded with the run's seed, so a resumed run gets the same noise
    without it being part of the resumable state.
    """

    def __init__(self, seed: int, offset: float = 0.0):
        self.seed, self.offset = seed, offset
        self.by_shape: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, shape) -> torch.Tensor:
        key = tuple(shape)
        if key not in self.by_shape:
            self.by_shape[key] = training_noise(key, torch.Generator().manual_seed(self.seed), self.offset)
        return self.by_shape[key]


def fixed_noise_for(config, seed: int) -> FixedNoise | None:
    return FixedNoise(seed, config.train_noise_offset) if config.diff_use_fixed_noise else None


def training_timesteps(batch: int, low: int, high: int, generator, shared: bool = False) -> torch.Tensor:
    """t ~ U[low, high) per sample, or with `shared` (train_fixed_timsteps_in_batch) one t for the whole batch."""
    if shared:
        return torch.randint(low, high, (1,), generator=generator).repeat(batch)
    return torch.randint(low, high, (batch,), generator=generator)


def denoising_step_loss(components, scheduler, latents, conditioning, config, generator, mask=None,
                        noise: torch.Tensor | None = None, processes: Processes = SINGLE) -> torch.Tensor:
    """LoRA loss: t ~ U[min_t, max_t), x_t = add_noise(x0, eps, t), target eps (or v), min-SNR weighted.

    `noise`: use this noise (diff_use_fixed_noise) instead of drawing fresh noise. The whole batch's
    noise and timesteps are drawn in every process; the UNet runs on this process's shard.
    """
    batch = latents.shape[0]
    if noise is None:
        noise = training_noise(latents.shape, generator, config.train_noise_offset)
    timesteps = training_timesteps(
        batch, config.train_min_timesteps, config.train_max_timesteps, generator, config.train_fixed_timsteps_in_batch
    )
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if components.v_prediction:
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    shard = processes.shard  # the whole batch was drawn; the UNet runs on this process's share
    noisy, target, timesteps, mask = shard(noisy), shard(target), shard(timesteps), shard(mask)
    prediction = unet_predict(components, noisy, timesteps, conditioning.map(processes.shard))
    device = prediction.device
    loss = denoising_loss(
        prediction, to_device(target, device), to_device(timesteps, device), scheduler.alphas_cumprod,
        snr_gamma=config.train_snr_gamma, v_prediction=components.v_prediction,
        mask=None if mask is None else to_device(mask, device), loss_function=config.train_loss_function,
    )
    return processes.weigh(loss, batch)
