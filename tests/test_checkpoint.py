"""Resumable states at the loop level: every kind of optimizer state and the data order come back exactly."""

import pytest
import torch

from traintrain.config import TrainConfig
from traintrain.data.dataset import BucketBatches, Sample
from traintrain.training.checkpoint import Checkpoints, SeededRandom, load_state
from traintrain.errors import TrainingStopped
from traintrain.training.loop import TrainingTask, run_loop


def run(tmp_path, config, resumed=None, stop_at=None):
    """A small noisy regression on the loop: random targets from the run's generator and data order."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    generator = torch.Generator().manual_seed(1)
    order = SeededRandom(2)
    inputs = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    checkpoints = Checkpoints({"seed": 1}, generator, resumed)

    def compute_loss(step):
        if step == stop_at:
            checkpoints.stop_requested.set()
        x = inputs[order.randrange(5)]
        target = torch.randn(4, generator=generator) + torch.randn(4)  # torch's global RNG too
        return ((weight @ x - target) ** 2).mean()

    def save(step):
        path = tmp_path / f"net_{step}steps.safetensors"
        path.write_bytes(b"")
        return path

    task = TrainingTask("test", [{"params": [weight], "lr": config.train_learning_rate}], compute_loss,
                        config.train_iterations, on_save=save, data_order=order, checkpoints=checkpoints)
    result = run_loop(task, config, lambda event: None)
    return weight.detach(), result


@pytest.mark.parametrize("optimizer, scheduler", [
    ("AdamW", "cosine"), ("AdamWScheduleFree", "constant"), ("Prodigy", "linear"), ("AdamW8bit", "cosine_with_restarts"),
])
def test_loop_resumes_bit_identically(tmp_path, optimizer, scheduler):
    config = TrainConfig(train_optimizer=optimizer, train_lr_scheduler=scheduler, train_iterations=7,
                         train_learning_rate=1.0 if optimizer == "Prodigy" else 0.05, train_lr_warmup_steps=2)
    whole, whole_result = run(tmp_path, config)
    with pytest.raises(TrainingStopped) as info:
        run(tmp_path, config, stop_at=3)
    assert info.value.state == tmp_path / "net_3steps.state"
    resumed, result = run(tmp_path, config, resumed=load_state(info.value.state))
    assert torch.equal(whole, resumed)
    assert result.losses == whole_result.losses and result.learning_rates == whole_result.learning_rates


def test_bucket_batches_state_round_trip():
    samples = [Sample(torch.zeros(1), str(i), (64 if i % 2 else 128, 64)) for i in range(7)]
    batches = BucketBatches(samples, 2, seed=4)
    for _ in range(3):
        batches.next()
    state = batches.get_state()
    expected = [[s.caption for s in batches.next()] for _ in range(8)]
    again = BucketBatches(samples, 2, seed=99)
    again.set_state(state)
    assert [[s.caption for s in again.next()] for _ in range(8)] == expected
