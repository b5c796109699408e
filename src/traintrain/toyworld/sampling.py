"""Drawing many toy-world pictures at once: a batched DDIM sampler with classifier-free guidance.

The pipeline draws one prompt at a time; judging a model takes hundreds of pictures, so here a
whole list of (prompt, seed) pairs goes through the UNet as one batch per step. Adapters hooked
into the UNet or text encoder act as they do in training and in the pipeline. Each picture's
start noise comes from its own seed, so a picture does not depend on what else is in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image

from traintrain.models.families import NOISE_SCHEDULE, SPECS

SAMPLER_STEPS = 20
GUIDANCE = 5.0
CHUNK = 128  # pictures per batch: bounds the memory, leaves the result unchanged


def vae_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def start_noise(seed: int, channels: int, side: int) -> torch.Tensor:
    return torch.randn((1, channels, side, side), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def draw_prompts(components, prompts: Sequence[str], seeds: Sequence[int], *, size: int = 64,
                 steps: int = SAMPLER_STEPS, guidance: float = GUIDANCE) -> list[Image.Image]:
    """One picture per (prompt, seed) pair."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    pictures: list[Image.Image] = []
    for start in range(0, len(prompts), CHUNK):
        pictures += _draw_chunk(components, prompts[start:start + CHUNK], seeds[start:start + CHUNK], size, steps,
                                guidance)
    return pictures


def _draw_chunk(components, prompts, seeds, size, steps, guidance) -> list[Image.Image]:
    unet, vae = components.unet, components.vae
    text_encoder, tokenizer = components.text_encoders[0], components.tokenizers[0]
    parameter = next(unet.parameters())
    device, dtype = parameter.device, parameter.dtype
    ids = tokenizer(["", *prompts], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    context = text_encoder(ids)[0].to(dtype)
    unconditional, conditional = context[:1].expand(len(prompts), -1, -1), context[1:]
    both = torch.cat([unconditional, conditional])
    scheduler = DDIMScheduler(**NOISE_SCHEDULE, prediction_type="v_prediction" if components.v_prediction
                              else "epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(steps)
    side = size // vae_factor(vae)
    latents = torch.cat([start_noise(seed, unet.config.in_channels, side) for seed in seeds]).to(device, dtype)
    for timestep in scheduler.timesteps:
        output = unet(torch.cat([latents, latents]), timestep, encoder_hidden_states=both).sample
        plain, guided = output.chunk(2)
        latents = scheduler.step(plain + guidance * (guided - plain), timestep, latents).prev_sample
    decoded = vae.decode(latents.to(next(vae.parameters()).dtype) / SPECS[components.family].latent_scale).sample
    arrays = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(array)) for array in arrays]
