"""Loss functions, min-SNR weights (both forms), timestep range and noise offset."""

import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_components
from traintrain.config import LossFunction, TrainConfig
from traintrain.models.encoding import Conditioning
from traintrain.modes.denoising import denoising_step_loss, training_noise
from traintrain.training.loss import denoising_loss, min_snr_weights, snr
from traintrain.training.runtime import noise_scheduler

ALPHAS = noise_scheduler(False).alphas_cumprod


def pair(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, 8, 8, generator=generator) * 2, torch.randn(3, 4, 8, 8, generator=generator)


@pytest.mark.parametrize("name, reference", [
    ("MSE", F.mse_loss), ("L1", F.l1_loss), ("smooth_L1", F.smooth_l1_loss),
])
def test_loss_functions(name, reference):
    prediction, target = pair()
    loss = denoising_loss(prediction, target, torch.tensor([10, 500, 900]), ALPHAS, snr_gamma=0, v_prediction=False,
                          loss_function=LossFunction.parse(name, "train_loss_function"))
    assert loss.item() == pytest.approx(reference(prediction, target).item(), rel=1e-5)


def test_min_snr_weights_epsilon_and_v_prediction():
    timesteps = torch.tensor([5, 200, 600, 990])
    a = ALPHAS[timesteps].double()
    value = a / (1 - a)
    assert torch.allclose(snr(ALPHAS, timesteps).double(), value, rtol=1e-5)
    eps = min_snr_weights(ALPHAS, timesteps, 5.0, v_prediction=False).double()
    v = min_snr_weights(ALPHAS, timesteps, 5.0, v_prediction=True).double()
    assert torch.allclose(eps, torch.clamp(5.0 / value, max=1.0), rtol=1e-5)
    assert torch.allclose(v, torch.clamp(value, max=5.0) / (value + 1), rtol=1e-5)
    assert eps[0] < 1 and eps[-1] == 1  # low t (high SNR) is damped, high t is not


def test_snr_weighting_applies_per_sample():
    prediction, target = pair()
    timesteps = torch.tensor([5, 500, 990])
    weighted = denoising_loss(prediction, target, timesteps, ALPHAS, snr_gamma=5.0, v_prediction=False)
    per_sample = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    expected = (per_sample * min_snr_weights(ALPHAS, timesteps, 5.0, False)).mean()
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.fixture(scope="module")
def components():
    return tiny_components()


def step_loss(components, config, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(4, 4, 8, 8, generator=generator)
    cond = Conditioning(torch.randn(4, 77, components.unet.config.cross_attention_dim, generator=generator))
    with torch.no_grad():
        return denoising_step_loss(components, noise_scheduler(False), latents, cond, config, generator)


def test_timesteps_stay_in_the_configured_range(components):
    seen = []
    hook = components.unet.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    try:
        for seed in range(20):
            step_loss(components, TrainConfig(train_min_timesteps=300, train_max_timesteps=310), seed)
    finally:
        hook.remove()
    values = torch.cat(seen)
    assert values.min() >= 300 and values.max() <= 309 and len(set(values.tolist())) > 5


def test_loss_function_reaches_the_training_step(components):
    mse = step_loss(components, TrainConfig(train_snr_gamma=0))
    l1 = step_loss(components, TrainConfig(train_snr_gamma=0, train_loss_function="L1"))
    assert mse.item() != pytest.approx(l1.item(), rel=1e-3)


def test_noise_offset_shifts_whole_channels():
    shape = (64, 4, 8, 8)
    plain = training_noise(shape, torch.Generator().manual_seed(0), 0.0)
    assert torch.equal(plain, torch.randn(shape, generator=torch.Generator().manual_seed(0)))  # off = unchanged
    offset = training_noise(shape, torch.Generator().manual_seed(0), 1.0)
    channel_means = offset.mean(dim=(2, 3))
    assert torch.allclose(offset[:, :, 0, 0] - plain[:, :, 0, 0],
                       (offset - plain)[:, :, 3, 5])  # one shift per sample and channel
    assert channel_means.var() > 0.5 > plain.mean(dim=(2, 3)).var()  # ~1 + 1/64 against ~1/64
