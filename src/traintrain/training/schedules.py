"""Learning-rate schedules: diffusers' curves, plus rule-based ones that honour their rules and warm-up.

`constant`, `constant_with_warmup`, `step` and `piecewise_constant` are written here as one
LambdaLR each so that `train_lr_warmup_steps` applies to all of them (diffusers' constant and
piecewise schedules ignore it) and bad rules get a message naming the format. `step` rules are
`N` or `N:GAMMA`: the lr is multiplied by GAMMA (0.1 when omitted, as torch's StepLR) every N steps.
"""

from __future__ import annotations

from collections.abc import Callable

from diffusers.optimization import get_scheduler
from torch.optim.lr_scheduler import LambdaLR

from traintrain.config import LRScheduler
from traintrain.errors import UserError

STEP_GAMMA = 0.1


def build_scheduler(config, optimizer, total_steps: int):
    name = config.train_lr_scheduler
    warmup = config.train_lr_warmup_steps
    rules = config.train_lr_step_rules.strip()
    if name in (LRScheduler.CONSTANT, LRScheduler.CONSTANT_WITH_WARMUP):
        return _with_warmup(optimizer, warmup, lambda step: 1.0)
    if name == LRScheduler.STEP:
        return _with_warmup(optimizer, warmup, step_decay(rules))
    if name == LRScheduler.PIECEWISE_CONSTANT:
        return _with_warmup(optimizer, warmup, piecewise_constant(rules))
    kwargs = dict(num_warmup_steps=warmup, num_training_steps=total_steps)
    if name == LRScheduler.COSINE_WITH_RESTARTS:
        kwargs["num_cycles"] = config.train_lr_scheduler_num_cycles
    if name == LRScheduler.POLYNOMIAL:
        kwargs["power"] = config.train_lr_scheduler_power
    try:
        return get_scheduler(name.value, optimizer, **kwargs)
    except ValueError as exc:
        raise UserError(f"train_lr_scheduler {name.value}: {exc}") from None


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
