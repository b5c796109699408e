"""The one training loop every mode shares: step, backward, optimizer, schedule, progress, saves.

Saves happen with the optimizer ready for them (schedule-free: eval mode), and the loop ends in that
state, so the weights a mode saves or reuses after `run_loop` are the ones training produced.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from traintrain.training.events import Message, Progress, Reporter
from traintrain.training.optimizers import build_training_optimizer


@dataclass
class TrainingTask:
    """What a mode hands the loop: parameters to optimise and a loss for step k."""

    phase: str
    param_groups: list[dict]
    compute_loss: Callable[[int], torch.Tensor]
    iterations: int
    save_every: int = 0
    on_periodic_save: Callable[[int], None] | None = None


@dataclass
class LoopResult:
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)


class NonFiniteLoss(RuntimeError):
    pass


def run_loop(task: TrainingTask, config, report: Reporter) -> LoopResult:
    """Exactly `task.iterations` optimizer steps (the original runs one too many)."""
    training = build_training_optimizer(config, task.param_groups, task.iterations)
    for note in training.notes:
        report(Message(note))
    if config.logging_verbose:
        report(Message(training.description))
    optimizer = training.optimizer
    params = [p for group in task.param_groups for p in group["params"]]
    result = LoopResult()
    average = None
    started = time.monotonic()
    training.before_training()
    for step in range(1, task.iterations + 1):
        loss = task.compute_loss(step)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss became {loss.item()} at step {step}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        learning_rate = training.learning_rate()
        training.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        average = value if average is None else 0.9 * average + 0.1 * value
        result.losses.append(value)
        result.learning_rates.append(learning_rate)
        elapsed = time.monotonic() - started
        eta = elapsed / step * (task.iterations - step)
        report(Progress(task.phase, step, task.iterations, value, average, learning_rate, elapsed, eta))
        if task.save_every and task.on_periodic_save and step % task.save_every == 0 and step < task.iterations:
            training.before_save()
            task.on_periodic_save(step)
            training.before_training()
    training.before_save()
    if not all(math.isfinite(v) for v in result.losses):
        raise NonFiniteLoss("loss is not finite")
    return result
