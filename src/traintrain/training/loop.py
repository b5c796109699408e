"""The one training loop every mode shares: step, backward, optimizer, schedule, progress, saves.

Saves happen with the optimizer ready for them (schedule-free: eval mode), and the loop ends in that
state, so the weights a mode saves or reuses after `run_loop` are the ones training produced.
With `preview_every`, previews are rendered every so many steps and once before the first step (step
0: what training changes from); a resumed phase has rendered that one already.
With `checkpoints`, each step's file save also writes a resumable state, a resumed phase continues
after its saved step, and a stop request ends the run after the current step with a save and a state.
A non-finite loss or gradient stops the run before anything is written (or, with
`train_nan_policy=skip`, the step is skipped, up to `train_nan_skip_limit` times).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import torch

from traintrain.config import NanPolicy
from traintrain.errors import NonFiniteLoss, TrainingStopped
from traintrain.training.checkpoint import Checkpoints
from traintrain.training.events import Message, Progress, Reporter
from traintrain.training.optimizers import build_training_optimizer

T = TypeVar("T")


class DataOrder(Protocol):
    """The position of a mode's data order (batch queue, random picks), kept in resumable states."""

    def get_state(self): ...

    def set_state(self, state) -> None: ...


@dataclass
class TrainingTask:
    """What a mode hands the loop: parameters to optimise and a loss for step k."""

    phase: str
    param_groups: list[dict]
    compute_loss: Callable[[int], torch.Tensor]
    iterations: int
    save_every: int = 0
    on_save: Callable[[int], Path] | None = None  # writes the network as of step k (periodic saves, stops)
    preview_every: int = 0
    on_preview: Callable[[int], None] | None = None
    data_order: DataOrder | None = None
    checkpoints: Checkpoints | None = None
    on_final_save: Callable[[], Path] | None = None  # writes the phase's result after its last step
    keep_final_state: bool = False  # save_state: also write a state beside the result, to continue later


@dataclass
class LoopResult:
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    average: float | None = None  # EMA of the loss (factor 0.9), as the progress bar shows it
    skipped: int = 0  # steps skipped for a non-finite loss or gradient


def run_loop(task: TrainingTask, config, report: Reporter) -> LoopResult:
    """Exactly `task.iterations` optimizer steps (the original runs one too many)."""
    training = build_training_optimizer(config, task.param_groups, task.iterations)
    for note in training.notes:
        report(Message(note))
    if config.logging_verbose:
        report(Message(training.description))
    optimizer = training.optimizer
    params = [p for group in task.param_groups for p in group["params"]]
    checkpoints = task.checkpoints
    training.before_training()
    result, start, finished = LoopResult(), 0, False
    restored = checkpoints.restore(task.phase, params, training, task.data_order) if checkpoints else None
    if restored:
        finished = restored.pop("finished", False)
        start = restored.pop("step")
        result = LoopResult(**restored)
        if finished:
            start = task.iterations
        else:
            report(Message(f"{task.phase}: resumed after step {start} of {task.iterations}"))
    if task.preview_every and task.on_preview and start == 0:  # "before": what the training changes from
        _with_saved_weights(training, task.on_preview, 0)
    last_saved = None
    started = time.monotonic()
    for step in range(start + 1, task.iterations + 1):
        value, problem = _accumulate_gradients(task, step, config.gradient_accumulation_steps, params)
        if problem is None:
            optimizer.step()
        else:
            result.skipped += 1
            _guard(config, step, problem, result.skipped, last_saved, report)
        learning_rate = training.learning_rate()
        optimizer.zero_grad(set_to_none=True)
        if problem is None:
            result.average = value if result.average is None else 0.9 * result.average + 0.1 * value
        training.step_schedule(result.average)  # reduce_on_plateau watches the loss average
        result.losses.append(value)
        result.learning_rates.append(learning_rate)
        elapsed = time.monotonic() - started
        eta = elapsed / (step - start) * (task.iterations - step)
        average = value if result.average is None else result.average  # a skipped first step has none yet
        report(Progress(task.phase, step, task.iterations, value, average, learning_rate, elapsed, eta))

        saved = None
        if task.save_every and task.on_save and step % task.save_every == 0 and step < task.iterations:
            saved = _with_saved_weights(training, task.on_save, step)
        if task.preview_every and task.on_preview and step % task.preview_every == 0 and step < task.iterations:
            _with_saved_weights(training, task.on_preview, step)  # previews show the weights a save would hold
        stop = checkpoints is not None and checkpoints.stop_requested.is_set() and step < task.iterations
        if stop and saved is None and task.on_save:
            saved = _with_saved_weights(training, task.on_save, step)
        state = None
        if saved is not None:
            last_saved = saved
            if checkpoints:
                progress = {"step": step, **dataclasses.asdict(result)}
                state = checkpoints.save(saved, task.phase, progress, params, training, task.data_order)
        if stop:
            raise TrainingStopped(task.phase, step, task.iterations, saved, state)
    training.before_save()
    progress = {"step": task.iterations, **dataclasses.asdict(result)}
    if checkpoints:
        checkpoints.phase_finished(task.phase, params, progress)
    if task.on_final_save and not finished:  # a phase finished in an earlier run keeps its files
        path = task.on_final_save()
        if task.keep_final_state and checkpoints:
            checkpoints.save(path, task.phase, progress, params, training, task.data_order, final=True)
    return result


def _accumulate_gradients(task: TrainingTask, step: int, micro_steps: int, params) -> tuple[float, str | None]:
    """Backward `micro_steps` batches' losses / micro_steps (gradient_accumulation_steps), then clip.

    Every batch is drawn even after a non-finite one, so the data order always advances by
    `micro_steps` per optimizer step. Returns the mean loss and what was wrong, if anything.
    """
    values, problem = [], None
    for _ in range(micro_steps):
        loss = task.compute_loss(step)
        values.append(float(loss.detach()))
        if problem is None and not torch.isfinite(loss):
            problem = f"the loss is {loss.item()}"
        if problem is None:
            (loss if micro_steps == 1 else loss / micro_steps).backward()
    if problem is None:
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        problem = None if torch.isfinite(norm) else f"the gradient norm is {norm.item()}"
    return sum(values) / micro_steps, problem


def _with_saved_weights(training, action: Callable[[int], T], step: int) -> T:
    """`action(step)` on the weights a save holds (schedule-free: the averaged ones), then train on."""
    training.before_save()
    outcome = action(step)
    training.before_training()
    return outcome


def _guard(config, step: int, problem: str, skipped: int, last_saved: Path | None, report: Reporter) -> None:
    """Stop on a non-finite step, or under the skip policy report it and let the loop skip it."""
    if config.train_nan_policy == NanPolicy.SKIP and skipped <= config.train_nan_skip_limit:
        most = config.train_nan_skip_limit
        report(Message(f"step {step}: {problem}; step skipped ({skipped} of at most {most})", "warning"))
        return
    limit = (
        f" after {skipped - 1} skipped steps (train_nan_skip_limit)"
        if config.train_nan_policy == NanPolicy.SKIP
        else ""
    )
    kept = f"the last good save {last_saved} is kept" if last_saved else "no file was written in this phase"
    raise NonFiniteLoss(
        f"training stopped at step {step}{limit}: {problem}. Likely causes: fp16 precision of the model or VAE "
        f"(set train_model_precision / train_vae_precision to bf16 or fp32) or a learning rate too high "
        f"(train_learning_rate {config.train_learning_rate:g}); {kept}. "
        "train_nan_policy=skip skips such steps instead"
    )
