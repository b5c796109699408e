"""The flow-matching families' noise schedule comes from the model: its folder's scheduler config, else the
family's (schnell's for a Flux transformer without guidance input), in training and in previews alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

from traintrain.models.assembly import config_template
from traintrain.models.families import Family
from traintrain.models.flow_schedule import dynamic_shift, schedule_sigmas, scheduler_config
from traintrain.models.flux_tiny import build_tiny_flux
from traintrain.models.loading import load_model
from traintrain.models.sd3_tiny import build_tiny_sd3
from traintrain.models.tiny import write_tiny_model
from traintrain.modes.flow_matching import flow_sigmas
from traintrain.rendering import flow_scheduler

TIMESTEPS = torch.tensor([0, 250, 499, 999])


def _scheduler_sigmas(config: dict, image_tokens: int) -> torch.Tensor:
    """What diffusers' own scheduler gives at each training timestep (it lists 1000 levels, noisiest first)."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    sigmas = np.linspace(1.0, 1 / 1000, 1000)
    mu = dynamic_shift(image_tokens, config) if config.get("use_dynamic_shifting") else None
    scheduler.set_timesteps(sigmas=sigmas, mu=mu)
    return scheduler.sigmas[999 - TIMESTEPS]


@pytest.mark.parametrize("family, component", [(Family.FLUX, "scheduler"), (Family.FLUX, "scheduler_schnell"),
                                               (Family.SD3, "scheduler"), (Family.ZIMAGE, "scheduler")])
@pytest.mark.parametrize("image_tokens", [16, 4096])
def test_training_sigmas_equal_the_schedulers(family, component, image_tokens):
    config = config_template(family, component)
    ours = schedule_sigmas(TIMESTEPS, image_tokens, config)
    assert torch.allclose(ours, _scheduler_sigmas(config, image_tokens).float(), atol=1e-5)
    assert ours[-1] == pytest.approx(1.0) and bool((ours.diff() > 0).all())


def test_the_shifts_of_the_releases():
    assert schedule_sigmas(TIMESTEPS, 16, config_template(Family.FLUX, "scheduler_schnell")).tolist() == \
        pytest.approx(((TIMESTEPS + 1) / 1000).tolist())  # schnell: unshifted, as BFL samples it
    dev = config_template(Family.FLUX, "scheduler")
    assert schedule_sigmas(torch.tensor([499]), 4096, dev) > schedule_sigmas(torch.tensor([499]), 16, dev)
    for family in (Family.SD3, Family.ZIMAGE):
        assert config_template(family, "scheduler")["shift"] == 3.0
        assert not config_template(family, "scheduler").get("use_dynamic_shifting")


def test_a_flux_model_without_guidance_input_gets_schnells_schedule():
    dev, schnell = build_tiny_flux(seed=0), build_tiny_flux(seed=0)
    schnell.denoiser = FluxTransformer2DModel.from_config(dict(dev.transformer.config) | {"guidance_embeds": False})
    assert scheduler_config(dev)["use_dynamic_shifting"] and scheduler_config(schnell)["shift"] == 1.0
    latents = torch.zeros(1, 16, 8, 8)
    assert not torch.allclose(flow_sigmas(dev, TIMESTEPS, latents), flow_sigmas(schnell, TIMESTEPS, latents))


def test_a_folders_own_scheduler_config_is_used_in_training_and_previews(tmp_path):
    folder = tmp_path / "sd3"
    write_tiny_model(Family.SD3, "diffusers", folder, seed=0)
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text()) | {"shift": 6.0}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    components = load_model(str(folder))
    assert components.scheduler_config["shift"] == 6.0
    latents = torch.zeros(1, 16, 8, 8)
    expected = schedule_sigmas(TIMESTEPS, 16, {"shift": 6.0})
    assert torch.allclose(flow_sigmas(components, TIMESTEPS, latents), expected)
    assert not torch.allclose(flow_sigmas(build_tiny_sd3(seed=0), TIMESTEPS, latents), expected)
    assert flow_scheduler(components).config.shift == 6.0
