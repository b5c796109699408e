"""gradient_accumulation_steps: k batches per optimizer step behave as one k-times-larger batch."""

import math
import threading

import pytest
import torch

from helpers import tiny_components
from job_helpers import tiny_job
from traintrain.config import TrainConfig
from traintrain.errors import TrainingStopped
from traintrain.jobs.runner import resume_job, run_job
from traintrain.models.encoding import encode_prompts
from traintrain.modes.denoising import unet_predict
from traintrain.networks.kohya_format import load_lora
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from traintrain.training.events import Progress, Saved
from traintrain.training.loop import TrainingTask, run_loop
from traintrain.training.loss import denoising_loss
from traintrain.training.runtime import noise_scheduler

SAMPLES, STEPS = 4, 2


def train_tiny_unet(batch: int, accumulation: int):
    """A LoRA on a tiny UNet trained on fixed samples (latent, noise, t each fixed per sample): the
    batches' random draws are the same however the samples are grouped."""
    components = tiny_components(seed=0)
    torch.manual_seed(0)  # the down weights' random init
    # float64: in float32 this random tiny UNet's gradients of a batch of 4 and of 4 batches of 1
    # differ by 0.7% from rounding alone (1e-11 in float64)
    components.unet.double()
    network = AdapterNetwork(components, NetworkSpec(rank=2, alpha=2, blocks=["IN01", "M00", "OUT03"])).apply().double()
    generator = torch.Generator().manual_seed(11)
    latents = torch.randn(SAMPLES, 4, 8, 8, generator=generator, dtype=torch.float64)
    noise = torch.randn(SAMPLES, 4, 8, 8, generator=generator, dtype=torch.float64)
    timesteps = torch.tensor([100, 350, 600, 850])
    with torch.no_grad():
        cond = encode_prompts(components, ["a red circle"] * SAMPLES)
    scheduler = noise_scheduler(False)
    position = {"next": 0}

    def compute_loss(step):
        start = position["next"] % SAMPLES
        position["next"] += batch
        chosen = slice(start, start + batch)
        noisy = scheduler.add_noise(latents[chosen], noise[chosen], timesteps[chosen])
        chunk = type(cond)(cond.hidden[chosen], None)
        prediction = unet_predict(components, noisy, timesteps[chosen], chunk)
        return denoising_loss(prediction, noise[chosen], timesteps[chosen], scheduler.alphas_cumprod, snr_gamma=5.0,
                              v_prediction=False)

    # SGD: Adam's first steps are about sign(gradient), which turns rounding in near-zero gradients into full steps
    config = TrainConfig(train_optimizer="SGDNesterov", train_lr_scheduler="constant", train_learning_rate=1e-2,
                         gradient_accumulation_steps=accumulation)
    params = network.unet_parameters()
    task = TrainingTask("LoRA", [{"params": params, "lr": 1e-2}], compute_loss, STEPS)
    events = []
    result = run_loop(task, config, events.append)
    return [p.detach().clone() for p in params], result, events, position["next"]


def test_accumulating_k_batches_of_one_equals_one_batch_of_k():
    whole, whole_result, _, drawn_whole = train_tiny_unet(batch=SAMPLES, accumulation=1)
    accumulated, result, events, drawn = train_tiny_unet(batch=1, accumulation=SAMPLES)
    assert drawn == drawn_whole == SAMPLES * STEPS  # compute_loss ran k times per optimizer step
    assert len(result.losses) == STEPS  # train_iterations stays the number of optimizer steps
    assert [e.step for e in events if isinstance(e, Progress)] == [1, 2]
    assert result.losses == pytest.approx(whole_result.losses, rel=1e-5)  # logged: mean of the micro losses
    assert any(not torch.equal(p, torch.zeros_like(p)) for p in accumulated)
    for mine, theirs in zip(accumulated, whole):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_a_non_finite_micro_batch_skips_the_whole_step():
    weight = torch.nn.Parameter(torch.ones(3))
    calls = []

    def compute_loss(step):
        calls.append(step)
        bad = step == 2 and len(calls) % 2 == 0  # the second micro batch of step 2
        return (weight * (float("nan") if bad else 1.0)).sum()

    config = TrainConfig(train_lr_scheduler="constant", gradient_accumulation_steps=2, train_nan_policy="skip")
    task = TrainingTask("LoRA", [{"params": [weight], "lr": 0.1}], compute_loss, 3)
    result = run_loop(task, config, lambda event: None)
    assert calls == [1, 1, 2, 2, 3, 3] and result.skipped == 1 and math.isnan(result.losses[1])
    assert len(result.losses) == 3


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("accumulation")


def test_resume_with_accumulation_is_bit_identical(root, tmp_path):
    config = tiny_job(root, gradient_accumulation_steps=2, train_iterations=4, save_per_steps=2, image_mirroring=True)
    whole = run_job(config, output_dir=tmp_path / "whole")
    assert len(whole.losses) == 4
    stop = threading.Event()

    def report(event):
        if isinstance(event, Saved) and event.step == 2:
            stop.set()

    with pytest.raises(TrainingStopped) as info:
        run_job(config, output_dir=tmp_path / "cut", report=report, stop=stop)
    resumed = resume_job(info.value.state)
    assert resumed.losses == whole.losses
    first, second = load_lora(whole.path)[0], load_lora(resumed.path)[0]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
