"""The one training loop every mode shares: step, backward, optimizer, schedule, progress, saves."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from traintrain.training.events import Progress, Reporter
from traintrain.training.optim import build_optimizer, build_scheduler


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
    optimizer = build_optimizer(config, task.param_groups)
    scheduler = build_scheduler(config, optimizer, task.iterations)
    params = [p for group in task.param_groups for p in group["params"]]
    result = LoopResult()
    average = None
    started = time.monotonic()
    for step in range(1, task.iterations + 1):
        loss = task.compute_loss(step)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss became {loss.item()} at step {step}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        learning_rate = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        average = value if average is None else 0.9 * average + 0.1 * value
        result.losses.append(value)
        result.learning_rates.append(learning_rate)
        elapsed = time.monotonic() - started
        eta = elapsed / step * (task.iterations - step)
        report(Progress(task.phase, step, task.iterations, value, average, learning_rate, elapsed, eta))
        if task.save_every and task.on_periodic_save and step % task.save_every == 0 and step < task.iterations:
            task.on_periodic_save(step)
    if not all(math.isfinite(v) for v in result.losses):
        raise NonFiniteLoss("loss is not finite")
    return result
