"""The training loop reads losses back every train_sync_every steps (each read waits for a GPU):
the same losses and progress as reading every step, with fewer waits."""

import sys

import pytest
import torch

from helpers import READ_BACKS
from traintrain.config import TrainConfig
from traintrain.training import loop
from traintrain.training.events import Progress
from traintrain.training.loop import TrainingTask, run_loop

STEPS = 10


def quadratic_task() -> TrainingTask:
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    target = torch.tensor([0.3, 0.1, -0.2])
    return TrainingTask("test", [{"params": [weight], "lr": 0.05}], lambda step: ((weight - target * step) ** 2).sum(),
                        STEPS)


def count_loop_reads(monkeypatch) -> list[str]:
    """Read-backs done by loop.py itself (the optimizer's own CPU bookkeeping is not counted)."""
    reads: list[str] = []
    for name in READ_BACKS:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            if sys._getframe(1).f_code.co_filename == loop.__file__:
                reads.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def run(**settings):
    events = []
    result = run_loop(quadratic_task(), TrainConfig(train_learning_rate=0.05, **settings), events.append)
    return result, [e for e in events if isinstance(e, Progress)]


def test_reading_every_few_steps_reports_every_step_with_the_same_losses():
    each, each_progress = run(train_sync_every=1)
    windowed, windowed_progress = run(train_sync_every=4)
    assert windowed.losses == each.losses and windowed.average == each.average
    assert [p.step for p in windowed_progress] == list(range(1, STEPS + 1))
    assert [p.loss for p in windowed_progress] == [p.loss for p in each_progress]


@pytest.mark.parametrize("settings, reads", [
    ({"train_sync_every": 4}, 3),  # after steps 4, 8 and the last
    ({"train_sync_every": 1}, STEPS),
    ({"train_sync_every": 0}, STEPS),  # on the CPU a read costs nothing
    ({"train_sync_every": 4, "train_nan_policy": "skip"}, STEPS),  # decides before each optimizer step
    ({"train_sync_every": 4, "train_lr_scheduler": "reduce_on_plateau"}, STEPS),  # follows every step's loss
])
def test_the_loop_waits_for_the_device_only_when_it_reads(monkeypatch, settings, reads):
    counted = count_loop_reads(monkeypatch)
    run(**settings)
    assert len(counted) == reads
