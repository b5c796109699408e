"""The one training loop every mode shares: step, backward, optimizer, schedule, progress, saves.

Saves happen with the optimizer ready for them (schedule-free: eval mode), and the loop ends in that
state, so the weights a mode saves or reuses after `run_loop` are the ones training produced.
With `preview_every`, previews are rendered every so many steps and once before the first step (step
0: what training changes from); a resumed phase has rendered that one already.
With `checkpoints`, each step's file save also writes a resumable state, a resumed phase continues
after its saved step, and a stop request ends the run after the current step with a save and a state.
A non-finite loss or gradient stops the run before anything is written (or, with
`train_nan_policy=skip`, the step is skipped, up to `train_nan_skip_limit` times).
Losses are read back from the device every `train_sync_every` steps and before every save, not
after each step: a read waits for the GPU to finish all queued work (see ReadBacks).
With `processes` (data-parallel training, see training/distributed.py) the gradients and loss are
averaged over the processes before clipping, and a stop request is agreed on where losses are read.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import torch

from traintrain.config import NanPolicy
from traintrain.errors import NonFiniteLoss, TrainingStopped
from traintrain.training.checkpoint import Checkpoints
from traintrain.training.compile import compiled_calls
from traintrain.training.distributed import SINGLE, Processes
from traintrain.training.events import Message, Progress, Reporter
from traintrain.training.optimizers import build_training_optimizer

T = TypeVar("T")
SYNC_EVERY_ON_ACCELERATORS = 10  # train_sync_every 0 on a GPU: read the losses back every 10 steps ...
PROGRESS_SECONDS = 2.0  # ... or sooner, so that progress still moves on slow steps


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
    processes: Processes = SINGLE  # data-parallel training: this process's shard and the all-reduce


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
    processes = task.processes
    every = _read_every(config, training, params)
    reads = ReadBacks(task, config, result, report, start, every, timed=not processes.distributed)
    for step in range(start + 1, task.iterations + 1):
        loss = _accumulate_gradients(task, step, config.gradient_accumulation_steps)
        loss, stop_votes = processes.average(params, loss, _stop_requested(checkpoints))
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        value, problem = reads.now(loss, norm) if reads.each_step else (None, None)
        if problem is None:
            optimizer.step()
        else:
            result.skipped += 1
            _guard(config, step, problem, result.skipped, last_saved, report)
        learning_rate = training.learning_rate()
        optimizer.zero_grad(set_to_none=True)
        if value is not None:
            reads.record(value, problem, learning_rate)
        else:
            reads.pending.append((step, loss, norm, learning_rate))
        training.step_schedule(result.average)  # reduce_on_plateau watches the loss average (read every step)
        if value is not None:
            reads.report_progress(step, value, learning_rate)

        save_due = bool(task.save_every and step % task.save_every == 0 and step < task.iterations)
        preview_due = bool(task.preview_every and step % task.preview_every == 0 and step < task.iterations)
        read = reads.each_step or save_due or preview_due or step == task.iterations or reads.due()
        if read:
            reads.drain(last_saved)  # nothing is written from weights whose losses were not checked
        saved = None
        if save_due and task.on_save:
            saved = _with_saved_weights(training, task.on_save, step)
        if preview_due and task.on_preview:
            _with_saved_weights(training, task.on_preview, step)  # previews show the weights a save would hold
        if stop_votes is None:
            stop = _stop_requested(checkpoints) and step < task.iterations
        else:  # all processes decide at the same steps, from the same count
            stop = read and step < task.iterations and stop_votes.item() > 0
        if stop:
            reads.drain(last_saved)
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


def _stop_requested(checkpoints: Checkpoints | None) -> bool:
    return checkpoints is not None and checkpoints.stop_requested.is_set()


def _accumulate_gradients(task: TrainingTask, step: int, micro_steps: int) -> torch.Tensor:
    """Backward `micro_steps` batches' losses / micro_steps (gradient_accumulation_steps).

    Returns the mean loss as a tensor: nothing is read back here. Every batch is drawn and backed
    even after a non-finite one (its step is skipped or stops the run), so the data order always
    advances by `micro_steps` per optimizer step.
    """
    losses = []
    for _ in range(micro_steps):
        with compiled_calls():  # train_compile: the denoiser runs compiled here only (training/compile.py)
            loss = task.compute_loss(step)
        (loss if micro_steps == 1 else loss / micro_steps).backward()
        losses.append(loss.detach())
    return losses[0] if micro_steps == 1 else torch.stack([value.double() for value in losses]).mean()


def _read_every(config, training, params) -> int:
    """Steps between reads of the loss. The skip policy decides before the optimizer step and
    reduce_on_plateau after it: both need every step's loss at once. On the CPU a read costs nothing."""
    if config.train_nan_policy == NanPolicy.SKIP or training.follows_loss:
        return 1
    if config.train_sync_every:
        return config.train_sync_every
    on_cpu = not params or params[0].device.type == "cpu"
    return 1 if on_cpu else SYNC_EVERY_ON_ACCELERATORS


class ReadBacks:
    """The losses of steps run but not yet read back, and reading them: every step, or all at once
    (one wait for the device) every train_sync_every steps, at most PROGRESS_SECONDS apart, and
    before anything is saved. Reading reports each step's progress and stops at the first
    non-finite one, naming it. Without `timed` (data-parallel processes, which must read at the
    same steps) only the step count decides."""

    def __init__(self, task, config, result: LoopResult, report: Reporter, start: int, every: int, timed: bool = True):
        self.task, self.config, self.result, self.report, self.start = task, config, result, report, start
        self.every, self.each_step, self.timed = every, every == 1, timed
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
        self.started = self.last_read = time.monotonic()

    def now(self, loss: torch.Tensor, norm: torch.Tensor) -> tuple[float, str | None]:
        loss_value, norm_value = torch.stack([loss.double(), norm.double()]).tolist()
        return loss_value, _problem(loss_value, norm_value)

    def due(self) -> bool:
        if len(self.pending) >= self.every:
            return True
        return self.timed and time.monotonic() - self.last_read >= PROGRESS_SECONDS

    def drain(self, last_saved: Path | None) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        values = torch.stack([t.double() for _, loss, norm, _ in pending for t in (loss, norm)]).tolist()
        self.last_read = time.monotonic()
        for index, (step, _, _, learning_rate) in enumerate(pending):
            loss_value, norm_value = values[2 * index], values[2 * index + 1]
            problem = _problem(loss_value, norm_value)
            if problem is not None:  # the skip policy reads every step, so this stops the run
                _guard(self.config, step, problem, self.result.skipped + 1, last_saved, self.report)
            self.record(loss_value, None, learning_rate)
            self.report_progress(step, loss_value, learning_rate)

    def record(self, value: float, problem: str | None, learning_rate: float) -> None:
        result = self.result
        if problem is None:
            result.average = value if result.average is None else 0.9 * result.average + 0.1 * value
        result.losses.append(value)
        result.learning_rates.append(learning_rate)

    def report_progress(self, step: int, value: float, learning_rate: float) -> None:
        result = self.result
        elapsed = time.monotonic() - self.started
        iterations = self.task.iterations
        eta = elapsed / (step - self.start) * (iterations - step)
        average = value if result.average is None else result.average  # a skipped first step has none yet
        self.report(Progress(self.task.phase, step, iterations, value, average, learning_rate, elapsed, eta))


def _problem(loss: float, norm: float) -> str | None:
    if not math.isfinite(loss):
        return f"the loss is {loss}"
    return None if math.isfinite(norm) else f"the gradient norm is {norm}"


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
