"""Shared test helpers: tiny models and deterministic inputs."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch

from traintrain.models.families import Family


def tiny_components(family=Family.SD1, seed=0):
    from traintrain.models.tiny import build_tiny_components

    components = build_tiny_components(family, seed=seed)
    for part in [components.unet, components.vae, *components.text_encoders]:
        part.eval().requires_grad_(False)
    return components


def clone_components(components):
    return copy.deepcopy(components)


def randomize_network(network, seed=1, scale=0.05):
    """Give every up weight random values so the adapter really changes outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.all_modules:
            weight = module.lora_up.weight
            weight.copy_(torch.randn(weight.shape, generator=generator) * scale)
    return network


def unet_inputs(components, batch=1, size=16, seed=3):
    generator = torch.Generator().manual_seed(seed)
    dim = components.unet.config.cross_attention_dim
    latents = torch.randn(batch, 4, size, size, generator=generator)
    hidden = torch.randn(batch, 77, dim, generator=generator)
    timesteps = torch.tensor([500] * batch)
    return latents, timesteps, hidden


def a1111_vae_state(vae) -> dict[str, torch.Tensor]:
    """The LDM layout of A1111 VAE files such as vae-ft-mse-840000: no first_stage_model. prefix."""
    from traintrain.models.ldm_convert import VAE_PREFIX, vae_to_ldm

    ldm = vae_to_ldm(vae.state_dict(), vae.config)
    return {key.removeprefix(VAE_PREFIX): value.contiguous() for key, value in ldm.items()}


READ_BACKS = ("item", "tolist", "__float__", "__int__", "__bool__")


@contextmanager
def no_read_back():
    """Inside, reading a tensor back to Python (item, float, bool, ...) raises: on a GPU each read
    waits for all queued work, so a training step must not do one."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor was read back to Python")

    with pytest.MonkeyPatch.context() as patch:
        for name in READ_BACKS:
            patch.setattr(torch.Tensor, name, refuse)
        yield
