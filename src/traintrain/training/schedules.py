"""Learning-rate schedules: diffusers' curves, torch's scheduler classes, and rule-based ones, all with warm-up.

`constant`, `constant_with_warmup`, `step` and `piecewise_constant` are written here as one
LambdaLR each so that `train_lr_warmup_steps` applies to all of them (diffusers' constant and
piecewise schedules ignore it) and bad rules get a message naming the format. `step` rules are
`N` or `N:GAMMA`: the lr is multiplied by GAMMA (0.1 when omitted, as torch's StepLR) every N steps.

The torch classes (the original extension's `cosine_annealing`, ..., `one_cycle`) run after the
linear warm-up, so their step counts (T_max, milestones, step_size_up, ...) start where it ends;
their defaults come from the steps left, and `train_lr_scheduler_settings` passes keyword arguments
to the class (or to diffusers' function), checked against its signature so a typo names what it accepts.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from diffusers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType
from torch.optim import lr_scheduler as torch_schedules
from torch.optim.lr_scheduler import LambdaLR

from traintrain.config import LRScheduler
from traintrain.errors import UserError
from traintrain.training.keyword_settings import parse_settings

STEP_GAMMA = 0.1
SETTINGS_FIELD = "train_lr_scheduler_settings"
NOT_SETTINGS = {"optimizer", "last_epoch", "verbose", "num_warmup_steps", "num_training_steps"}  # set by the run
EXPONENTIAL_END = 0.01  # exponential: the lr falls to 1% of its start over the steps after warm-up
MULTI_STEP_AT = (0.5, 0.75)  # multi_step: lr x gamma (0.1) at 50% and 75% of the steps after warm-up
CYCLIC_LOW = 0.1  # cyclic: from lr x 0.1 up to the lr and back, train_lr_scheduler_num_cycles times
PLATEAU_PATIENCE = (10, 0.05)  # reduce_on_plateau: steps without a better loss average, at least 10 or 5%

TORCH_CLASSES = {
    LRScheduler.COSINE_ANNEALING: torch_schedules.CosineAnnealingLR,
    LRScheduler.COSINE_ANNEALING_WITH_RESTARTS: torch_schedules.CosineAnnealingWarmRestarts,
    LRScheduler.EXPONENTIAL: torch_schedules.ExponentialLR,
    LRScheduler.MULTI_STEP: torch_schedules.MultiStepLR,
    LRScheduler.REDUCE_ON_PLATEAU: torch_schedules.ReduceLROnPlateau,
    LRScheduler.CYCLIC: torch_schedules.CyclicLR,
    LRScheduler.ONE_CYCLE: torch_schedules.OneCycleLR,
}


def build_scheduler(config, optimizer, total_steps: int):
    name = config.train_lr_scheduler
    warmup = config.train_lr_warmup_steps
    rules = config.train_lr_step_rules.strip()
    settings = parse_settings(config.train_lr_scheduler_settings, SETTINGS_FIELD)
    if name in TORCH_CLASSES:
        return torch_schedule(config, optimizer, total_steps, settings)
    if name in (LRScheduler.CONSTANT, LRScheduler.CONSTANT_WITH_WARMUP, LRScheduler.STEP,
                LRScheduler.PIECEWISE_CONSTANT):
        check_settings(name, settings, [])
    if name in (LRScheduler.CONSTANT, LRScheduler.CONSTANT_WITH_WARMUP):
        return _with_warmup(optimizer, warmup, lambda step: 1.0)
    if name == LRScheduler.STEP:
        return _with_warmup(optimizer, warmup, step_decay(rules))
    if name == LRScheduler.PIECEWISE_CONSTANT:
        return _with_warmup(optimizer, warmup, piecewise_constant(rules))
    function = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name.value)]
    kwargs = dict(num_warmup_steps=warmup, num_training_steps=total_steps)
    if name == LRScheduler.COSINE_WITH_RESTARTS:
        kwargs["num_cycles"] = config.train_lr_scheduler_num_cycles
    if name == LRScheduler.POLYNOMIAL:
        kwargs["power"] = config.train_lr_scheduler_power
    check_settings(name, settings, accepted_settings(function))
    try:
        return function(optimizer, **{**kwargs, **settings})
    except (TypeError, ValueError) as exc:
        field = SETTINGS_FIELD if settings else "train_lr_scheduler"
        raise UserError(f"{name.value} with settings {settings}: {exc}", field=field) from None


def fixed_scheduler(optimizer) -> LambdaLR:
    """For optimizers that schedule themselves: the lr stays as given."""
    return LambdaLR(optimizer, lambda step: 1.0)


def _with_warmup(optimizer, warmup: int, factor: Callable[[int], float]) -> LambdaLR:
    def lr_lambda(step: int) -> float:
        ramp = step / warmup if step < warmup else 1.0
        return ramp * factor(step)

    return LambdaLR(optimizer, lr_lambda)


def step_decay(rules: str) -> Callable[[int], float]:
    example = "e.g. 100 (lr x 0.1 every 100 steps) or 100:0.5"
    if not rules:
        raise UserError(f"train_lr_step_rules: the step scheduler needs rules, {example}")
    size_text, _, gamma_text = rules.partition(":")
    try:
        size = int(size_text)
        gamma = float(gamma_text) if gamma_text.strip() else STEP_GAMMA
    except ValueError:
        raise UserError(
            f"train_lr_step_rules: '{rules}' is not N or N:GAMMA for the step scheduler, {example}"
        ) from None
    if size < 1 or gamma < 0:
        raise UserError(f"train_lr_step_rules: '{rules}' needs N >= 1 and GAMMA >= 0, {example}")
    return lambda step: gamma ** (step // size)


def piecewise_constant(rules: str) -> Callable[[int], float]:
    """`M1:S1,M2:S2,...,LAST`: multiplier M1 before step S1, M2 before S2, ..., LAST afterwards."""
    example = "e.g. 1:100,0.1:200,0.01"
    if not rules:
        raise UserError(f"train_lr_step_rules: piecewise_constant needs rules, {example}")
    *pairs, last = [part.strip() for part in rules.split(",")]
    try:
        bounds = []
        for pair in pairs:
            multiplier, until = pair.split(":")
            bounds.append((int(until), float(multiplier)))
        final = float(last)
    except ValueError:
        raise UserError(f"train_lr_step_rules: '{rules}' is not MULTIPLIER:STEP,...,MULTIPLIER, {example}") from None
    if [until for until, _ in bounds] != sorted({until for until, _ in bounds}):
        raise UserError(f"train_lr_step_rules: the steps in '{rules}' must increase, {example}")

    def factor(step: int) -> float:
        for until, multiplier in bounds:
            if step < until:
                return multiplier
        return final

    return factor


def accepted_settings(target) -> list[str]:
    """The keyword arguments of a scheduler class or function that a user may set."""
    return [name for name in inspect.signature(target).parameters if name not in NOT_SETTINGS]


def check_settings(name: LRScheduler, settings: dict, accepted: list[str]) -> None:
    unknown = [key for key in settings if key not in accepted]
    if unknown:
        keys = ", ".join(f"'{key}'" for key in unknown)
        fix = f"it accepts: {', '.join(accepted)}" if accepted else f"it takes none; clear {SETTINGS_FIELD}"
        raise UserError(f"{name.value} has no setting {keys}", fix, field=SETTINGS_FIELD)


def torch_schedule(config, optimizer, total_steps: int, settings: dict) -> WarmedSchedule:
    """One of TORCH_CLASSES after the warm-up, with defaults for this run's length and lrs."""
    name = config.train_lr_scheduler
    cls = TORCH_CLASSES[name]
    check_settings(name, settings, accepted_settings(cls))
    warmup = config.train_lr_warmup_steps
    span = Span(max(1, total_steps - warmup), config.train_lr_scheduler_num_cycles, config.train_learning_rate)

    def make(optimizer, group_lrs: list[float]):
        arguments = {**DEFAULTS[name](span, group_lrs), **span.per_group(settings, group_lrs)}
        return cls(optimizer, **arguments)

    try:
        return WarmedSchedule(optimizer, warmup, make, plateau=name == LRScheduler.REDUCE_ON_PLATEAU)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{name.value} with settings {settings}: {exc}", field=SETTINGS_FIELD) from None


@dataclass(frozen=True)
class Span:
    """What the torch classes' defaults derive from: the steps after warm-up, the cycles, the main lr."""

    steps: int
    cycles: int
    main_lr: float

    def per_group(self, settings: dict, group_lrs: list[float]) -> dict:
        """cyclic's and one_cycle's lrs given as one number are the UNet's; other groups keep their ratio to it."""
        scaled = dict(settings)
        for key in ("base_lr", "max_lr"):
            if isinstance(scaled.get(key), (int, float)) and self.main_lr > 0:
                scaled[key] = [scaled[key] * lr / self.main_lr for lr in group_lrs]
        return scaled


DEFAULTS: dict[LRScheduler, Callable[[Span, list[float]], dict]] = {
    LRScheduler.COSINE_ANNEALING: lambda span, lrs: {"T_max": span.steps},
    LRScheduler.COSINE_ANNEALING_WITH_RESTARTS: lambda span, lrs: {"T_0": math.ceil(span.steps / span.cycles)},
    LRScheduler.EXPONENTIAL: lambda span, lrs: {"gamma": EXPONENTIAL_END ** (1 / span.steps)},
    LRScheduler.MULTI_STEP: lambda span, lrs: {"milestones": [int(span.steps * at) for at in MULTI_STEP_AT]},
    LRScheduler.REDUCE_ON_PLATEAU: lambda span, lrs: {
        "mode": "min", "patience": max(PLATEAU_PATIENCE[0], int(span.steps * PLATEAU_PATIENCE[1])),
    },
    LRScheduler.CYCLIC: lambda span, lrs: {  # only the lr cycles: Adam's beta1 stays (cycle_momentum=True cycles it)
        "base_lr": [lr * CYCLIC_LOW for lr in lrs], "max_lr": list(lrs),
        "step_size_up": max(1, span.steps // (2 * span.cycles)), "cycle_momentum": False,
    },
    LRScheduler.ONE_CYCLE: lambda span, lrs: {"max_lr": list(lrs), "total_steps": span.steps, "cycle_momentum": False},
}

PLATEAU_PROGRESS = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch", "_last_lr")


class WarmedSchedule:
    """A torch.optim.lr_scheduler class after `warmup` steps of linear warm-up from 0 to its first lr.

    Each group's lr is its own (UNet, text encoder). A resumed state builds the class for this run
    and replays the saved number of steps, so an interrupted run continues bit for bit and a
    finished one continued to more train_iterations follows the curve of that length (a restored
    OneCycleLR would stop at its old total). ReduceLROnPlateau follows the losses, not the step
    count: its counters are restored, its settings are this run's.
    """

    def __init__(self, optimizer, warmup: int, make: Callable, *, plateau: bool = False):
        self.optimizer, self.warmup, self.make, self.plateau = optimizer, warmup, make, plateau
        self.group_lrs = [group["lr"] for group in optimizer.param_groups]
        self._start()

    def _start(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.group_lrs, strict=True):
            group["lr"] = lr
            group.pop("initial_lr", None)  # from a loaded optimizer state: the class sets its own
        self.steps = 0
        self.inner = self.make(self.optimizer, list(self.group_lrs))
        self.start_lrs = self.get_last_lr()
        self._warm()

    def _warm(self) -> None:
        ramp = self.steps / self.warmup if self.steps < self.warmup else 1.0
        self._set_lrs([lr * ramp for lr in self.start_lrs])

    def _set_lrs(self, lrs: list[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr

    def step(self, loss_average: float | None = None) -> None:
        """One step on; reduce_on_plateau watches `loss_average` and holds still without one."""
        self.steps += 1
        if self.steps <= self.warmup:
            self._warm()
        elif not self.plateau:
            self.inner.step()
        elif loss_average is not None:
            self.inner.step(loss_average)

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    get_lr = get_last_lr  # as torch's schedulers: the lrs of the coming step

    def state_dict(self) -> dict:
        return {"steps": self.steps, "plateau": self.inner.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict) -> None:
        self._start()
        if self.plateau:
            self.steps = state["steps"]
            saved = state["plateau"]
            progress = {key: saved[key] for key in PLATEAU_PROGRESS if key in saved}
            self.inner.load_state_dict({**self.inner.state_dict(), **progress})
            if self.steps < self.warmup:
                self._warm()
            else:
                self._set_lrs(list(self.inner._last_lr))
            return
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": a replay has none
            warnings.simplefilter("ignore")
            for _ in range(state["steps"]):
                self.step()
