"""Optimizer and learning-rate schedule from the config."""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler

from traintrain.config import LRScheduler, Optimizer
from traintrain.errors import UserError


def build_optimizer(config, param_groups: list[dict]) -> torch.optim.Optimizer:
    if config.train_optimizer == Optimizer.ADAMW:
        return torch.optim.AdamW(param_groups, lr=config.train_learning_rate, weight_decay=1e-2)
    raise UserError(f"train_optimizer: {config.train_optimizer.value} is not available")


def build_scheduler(config, optimizer, total_steps: int):
    name = config.train_lr_scheduler
    kwargs = dict(num_warmup_steps=config.train_lr_warmup_steps, num_training_steps=total_steps)
    if name == LRScheduler.COSINE_WITH_RESTARTS:
        kwargs["num_cycles"] = config.train_lr_scheduler_num_cycles
    if name == LRScheduler.POLYNOMIAL:
        kwargs["power"] = config.train_lr_scheduler_power
    if name == LRScheduler.PIECEWISE_CONSTANT:
        if not config.train_lr_step_rules.strip():
            raise UserError("train_lr_step_rules: piecewise_constant needs rules such as 1:100,0.1:200,0.01")
        kwargs = dict(step_rules=config.train_lr_step_rules.strip())
    if name in (LRScheduler.CONSTANT,):
        kwargs = {}
    try:
        return get_scheduler(name.value, optimizer, **kwargs)
    except ValueError as exc:
        raise UserError(f"train_lr_scheduler {name.value}: {exc}") from None
