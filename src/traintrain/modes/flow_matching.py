"""The flow-matching training step of the transformer families: Flux.1 (packed latents, as FluxPipeline runs
the model) and SD3 / SD3.5 (as StableDiffusion3Pipeline runs it).

x_t = (1 - sigma) * x0 + sigma * noise and the model predicts the flow, noise - x0. sigma comes from the
usual timestep draw t ~ U[min_t, max_t) of 1000, shifted as the model's own scheduler shifts it
(models/flow_schedule.py: FLUX.1-dev's mu grows linearly in the number of image tokens, 0.5 at 256 to 1.15
at 4096, so larger images get noisier timesteps; schnell is unshifted; SD3.5 and Z-Image-Turbo use a fixed
3.0). Flux's transformer sees latents packed 2x2 into tokens, image/text position ids, T5 states,
CLIP's pooled vector and, for guidance-distilled models (dev), the guidance value (train_flux_guidance).

SD3's transformer takes the [B, 16, H, W] latents as they are (it patches them itself), the timestep
as sigma * 1000, the CLIP/T5 token states and the two CLIPs' pooled vectors. Each family's predict and
noise levels are chosen here (`transformer_predict`, `flow_sigmas`), so the modes stay family-blind.

Z-Image runs as ZImagePipeline runs it: one
[16, 1, H, W] latent per sample, its timestep input 1 - sigma (the model's t is the clean fraction), one
variable-length tensor of Qwen3 states per prompt, and an output that is the negated flow, x0 - noise.
"""

from __future__ import annotations

import torch
from diffusers import FluxPipeline

from traintrain.config import TrainConfig
from traintrain.models.encoding import Conditioning
from traintrain.models.families import Family
from traintrain.models.flow_schedule import TIMESTEPS, schedule_sigmas, scheduler_config
from traintrain.models.zimage_text import prompt_states
from traintrain.modes.denoising import training_noise, training_timesteps
from traintrain.training.distributed import SINGLE, Processes
from traintrain.training.loss import ELEMENTWISE
from traintrain.training.transfer import to_device


def flow_x0(components, latents: torch.Tensor) -> torch.Tensor:
    """The flow's clean end x0 from cached latents (`sample * scale`): Flux's VAE also shifts them."""
    spec = components.spec
    return latents - spec.latent_shift * spec.latent_scale


def flow_noisy(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - sigma) * x0 + sigma * noise, one sigma per sample."""
    expanded = sigmas.view(-1, 1, 1, 1)
    return (1 - expanded) * x0 + expanded * noise


def flow_sigmas(components, timesteps: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """The model's noise levels for integer timesteps on latents of this size (its scheduler's shift)."""
    height, width = latents.shape[-2:]
    return schedule_sigmas(timesteps, (height // 2) * (width // 2), scheduler_config(components))


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, 4C] tokens, as FluxPipeline packs them."""
    batch, channels, height, width = latents.shape
    return FluxPipeline._pack_latents(latents, batch, channels, height, width)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack` for latents of height x width."""
    batch, count, features = tokens.shape
    grid = tokens.view(batch, height // 2, width // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(batch, features // 4, height, width)


def transformer_predict(components, noisy: torch.Tensor, sigmas: torch.Tensor, conditioning: Conditioning,
                        guidance: float = TrainConfig.train_flux_guidance) -> torch.Tensor:
    """The transformer's flow prediction for noisy [B, 16, H, W] latents at noise levels `sigmas`, in the same
    shape, as the family's pipeline runs it (`guidance`: a guidance-distilled Flux's guidance input, the run's
    train_flux_guidance; the default is that setting's)."""
    if components.family is Family.SD3:
        return sd3_predict(components, noisy, sigmas, conditioning)
    if components.family is Family.ZIMAGE:
        return zimage_predict(components, noisy, sigmas, conditioning)
    return flux_predict(components, noisy, sigmas, conditioning, guidance)


def sd3_predict(components, noisy: torch.Tensor, sigmas: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
    """SD3's transformer on unpacked latents; its timestep input is sigma * 1000, as the pipeline passes it."""
    transformer = components.transformer
    device, dtype = _place(transformer)
    if conditioning.pooled is None:
        raise ValueError("SD3 conditioning needs the CLIPs' pooled embeddings")
    return transformer(
        hidden_states=to_device(noisy, device, dtype), timestep=to_device(sigmas * TIMESTEPS, device, dtype),
        encoder_hidden_states=to_device(conditioning.hidden, device, dtype),
        pooled_projections=to_device(conditioning.pooled, device, dtype), return_dict=False,
    )[0]


def zimage_predict(components, noisy: torch.Tensor, sigmas: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
    """Z-Image's transformer on per-sample [16, 1, H, W] latents at t = 1 - sigma with each prompt's own
    tokens; its output is x0 - noise, negated here into the flow the objective compares."""
    transformer = components.transformer
    device, dtype = _place(transformer)
    latents = to_device(noisy, device, dtype).unsqueeze(2)
    prompts = [to_device(states, device, dtype) for states in prompt_states(conditioning)]
    output = transformer(list(latents.unbind(0)), to_device(1 - sigmas, device, dtype), prompts,
                         return_dict=False)[0]
    return -torch.stack(output).squeeze(2)


def _place(model) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def flux_predict(components, noisy: torch.Tensor, sigmas: torch.Tensor, conditioning: Conditioning,
                 guidance: float) -> torch.Tensor:
    """Flux's transformer on packed latents with image/text position ids and, for dev, the guidance input
    (schnell has none and ignores `guidance`)."""
    transformer = components.transformer
    parameter = next(transformer.parameters())
    device, dtype = parameter.device, parameter.dtype
    batch, _, height, width = noisy.shape
    hidden = to_device(conditioning.hidden, device, dtype)
    if conditioning.pooled is None:
        raise ValueError("Flux conditioning needs CLIP's pooled embedding")
    image_ids = to_device(FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, "cpu", dtype), device)
    text_ids = torch.zeros(hidden.shape[1], 3, device=device, dtype=dtype)
    guidance_input = None
    if transformer.config.guidance_embeds:
        guidance_input = torch.full((batch,), guidance, device=device, dtype=torch.float32)
    tokens = transformer(
        hidden_states=pack(to_device(noisy, device, dtype)), timestep=to_device(sigmas, device, dtype),
        guidance=guidance_input, pooled_projections=to_device(conditioning.pooled, device, dtype),
        encoder_hidden_states=hidden,
        txt_ids=text_ids, img_ids=image_ids, return_dict=False,
    )[0]
    return unpack(tokens, height, width)


def flow_matching_step_loss(components, latents: torch.Tensor, conditioning: Conditioning, config, generator,
                            mask: torch.Tensor | None = None, processes: Processes = SINGLE,
                            noise: torch.Tensor | None = None) -> torch.Tensor:
    """LoRA loss on Flux / SD3. `latents` are the cache's `sample * scale`; their VAEs also shift them, so
    x0 = latents - shift * scale. The whole batch's noise and timesteps are drawn in every process;
    `noise` (diff_use_fixed_noise) replaces the drawn noise."""
    batch = latents.shape[0]
    x0 = flow_x0(components, latents)
    if noise is None:
        noise = training_noise(x0.shape, generator, config.train_noise_offset)
    timesteps = training_timesteps(batch, config.train_min_timesteps, config.train_max_timesteps, generator,
                                   config.train_fixed_timsteps_in_batch)
    sigmas = flow_sigmas(components, timesteps, x0)
    noisy = flow_noisy(x0, noise, sigmas)
    target = noise - x0
    shard = processes.shard
    noisy, target, sigmas, mask = shard(noisy), shard(target), shard(sigmas), shard(mask)
    prediction = transformer_predict(components, noisy, sigmas, conditioning.map(shard), config.train_flux_guidance)
    error = ELEMENTWISE[config.train_loss_function](prediction.float(), to_device(target, prediction.device).float(),
                                                    reduction="none")
    if mask is not None:
        error = error * to_device(mask, error.device)
    return processes.weigh(error.mean(dim=(1, 2, 3)).mean(), batch)
