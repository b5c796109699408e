"""Every optimizer of the seed, each from its own library, with the quirks the loop must honour.

One table keeps, per name, the package to install, the class and the defaults the seed's setups
use, so adding an optimizer is one line. Two behaviours change the loop: AdaFactor's relative step
finds the lr itself (the lr schedule is then unused), and schedule-free optimizers hold the weights
to save only in eval mode.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from dataclasses import dataclass, field

import torch

from traintrain.config import Optimizer
from traintrain.errors import UserError
from traintrain.training.schedules import build_scheduler, fixed_scheduler


@dataclass(frozen=True)
class OptimizerKind:
    package: str  # what `pip install` needs, named in the error when it is missing
    module: str
    attribute: str
    defaults: dict = field(default_factory=dict)
    schedule_free: bool = False
    adaptive: bool = False  # Prodigy / D-Adaptation: lr multiplies a step size they estimate (use ~1.0)


_BNB, _DADAPT, _SF = "bitsandbytes", "dadaptation", "schedulefree"
NESTEROV = {"momentum": 0.9, "nesterov": True}

REGISTRY: dict[Optimizer, OptimizerKind] = {
    Optimizer.ADAMW: OptimizerKind("torch", "torch.optim", "AdamW", {"weight_decay": 1e-2}),
    Optimizer.ADAMW8BIT: OptimizerKind(_BNB, "bitsandbytes.optim", "AdamW8bit"),
    Optimizer.ADAM8BIT: OptimizerKind(_BNB, "bitsandbytes.optim", "Adam8bit"),
    Optimizer.LION: OptimizerKind("lion-pytorch", "lion_pytorch", "Lion"),
    Optimizer.LION8BIT: OptimizerKind(_BNB, "bitsandbytes.optim", "Lion8bit"),
    Optimizer.PAGED_ADAMW8BIT: OptimizerKind(_BNB, "bitsandbytes.optim", "PagedAdamW8bit"),
    Optimizer.SGD_NESTEROV: OptimizerKind("torch", "torch.optim", "SGD", NESTEROV),
    Optimizer.SGD_NESTEROV8BIT: OptimizerKind(_BNB, "bitsandbytes.optim", "SGD8bit", NESTEROV),
    Optimizer.ADAFACTOR: OptimizerKind(
        "transformers", "transformers.optimization", "Adafactor",
        {"relative_step": True, "scale_parameter": True, "warmup_init": False},
    ),
    Optimizer.PRODIGY: OptimizerKind("prodigyopt", "prodigyopt", "Prodigy", adaptive=True),
    Optimizer.DADAPT_ADAM: OptimizerKind(_DADAPT, "dadaptation", "DAdaptAdam", adaptive=True),
    Optimizer.DADAPT_LION: OptimizerKind(_DADAPT, "dadaptation", "DAdaptLion", adaptive=True),
    Optimizer.DADAPT_ADAGRAD: OptimizerKind(_DADAPT, "dadaptation", "DAdaptAdaGrad", adaptive=True),
    Optimizer.DADAPT_ADAN: OptimizerKind(_DADAPT, "dadaptation", "DAdaptAdan", adaptive=True),
    Optimizer.DADAPT_SGD: OptimizerKind(_DADAPT, "dadaptation", "DAdaptSGD", adaptive=True),
    Optimizer.ADAMW_SCHEDULE_FREE: OptimizerKind(_SF, "schedulefree", "AdamWScheduleFree", schedule_free=True),
    Optimizer.RADAM_SCHEDULE_FREE: OptimizerKind(_SF, "schedulefree", "RAdamScheduleFree", schedule_free=True),
    Optimizer.SGD_SCHEDULE_FREE: OptimizerKind(_SF, "schedulefree", "SGDScheduleFree", schedule_free=True),
    Optimizer.CAME: OptimizerKind("pytorch-optimizer", "pytorch_optimizer", "CAME"),
}


def parse_settings(text: str) -> dict:
    """`key=value` per line or separated by ';'; values are Python literals (0.01, True, 0.9,0.99)."""
    settings = {}
    for item in re.split(r"[;\n]", text or ""):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(
                f"train_optimizer_settings: '{item}' is not key=value (e.g. weight_decay=0.01; betas=0.9,0.99)"
            )
        settings[key] = _literal(value.strip())
    return settings


def _literal(text: str):
    words = {"true": True, "false": False, "none": None}
    if text.lower() in words:
        return words[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def optimizer_class(name: Optimizer):
    kind = REGISTRY[name]
    try:
        module = importlib.import_module(kind.module)
    except ImportError:
        raise UserError(
            f"train_optimizer {name.value} needs the package '{kind.package}': pip install {kind.package}"
        ) from None
    return getattr(module, kind.attribute)


@dataclass
class TrainingOptimizer:
    """The optimizer, its lr schedule, and what the loop must do around steps and saves."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    schedule_free: bool
    relative_step: bool
    notes: list[str]  # user-facing remarks on how the settings combine
    description: str  # what was built, for logging_verbose

    def before_training(self) -> None:
        if self.schedule_free:
            self.optimizer.train()  # type: ignore[attr-defined]  # schedule-free optimizers add train()/eval()

    def before_save(self) -> None:
        """Schedule-free optimizers train on an interpolation; the averaged weights appear in eval mode."""
        if self.schedule_free:
            self.optimizer.eval()  # type: ignore[attr-defined]  # see before_training

    def learning_rate(self) -> float:
        """The lr of the first group's last step, including what adaptive optimizers found."""
        if self.relative_step:
            return float(self.scheduler.get_lr()[0])
        group = self.optimizer.param_groups[0]
        return float(group.get("scheduled_lr", group["lr"])) * float(group.get("d", 1.0))


def build_training_optimizer(config, param_groups: list[dict], total_steps: int) -> TrainingOptimizer:
    name = config.train_optimizer
    kind = REGISTRY[name]
    cls = optimizer_class(name)
    settings = {**kind.defaults, **parse_settings(config.train_optimizer_settings)}
    relative_step = name == Optimizer.ADAFACTOR and bool(settings.get("relative_step"))
    if kind.schedule_free and "warmup_steps" in inspect.signature(cls).parameters:
        settings.setdefault("warmup_steps", config.train_lr_warmup_steps)
    if kind.adaptive:
        _check_single_lr(name, param_groups)
    arguments = {"lr": None if relative_step else config.train_learning_rate, **settings}
    try:
        optimizer = cls(param_groups, **arguments)
    except (TypeError, ValueError) as exc:
        raise UserError(f"train_optimizer {name.value} with settings {settings}: {exc}") from None

    notes = []
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if relative_step:
        from transformers.optimization import AdafactorSchedule

        scheduler, schedule = AdafactorSchedule(optimizer), "AdaFactor's relative step"
        notes.append("AdaFactor with relative_step finds the learning rate itself; train_lr_scheduler is not used")
    elif kind.schedule_free:
        scheduler, schedule = fixed_scheduler(optimizer), "none (schedule-free)"
        notes.append(f"{name.value} needs no lr schedule; train_lr_scheduler is not used")
    else:
        scheduler = build_scheduler(config, optimizer, total_steps)
        schedule = f"{config.train_lr_scheduler.value}, warm-up {config.train_lr_warmup_steps} steps"
    if kind.adaptive and config.train_learning_rate < 0.1:
        notes.append(f"{name.value} estimates the step size; train_learning_rate multiplies it and is usually 1.0")
    description = f"optimizer {kind.module}.{kind.attribute} {arguments}; lr schedule: {schedule}"
    return TrainingOptimizer(optimizer, scheduler, kind.schedule_free, relative_step, notes, description)


def _check_single_lr(name: Optimizer, param_groups: list[dict]) -> None:
    rates = {group.get("lr") for group in param_groups} - {None}
    if len(rates) > 1:
        raise UserError(
            f"{name.value} adapts one step size for all parameters: set train_textencoder_learning_rate to 0 "
            "(the same lr as the UNet)"
        )


def check_optimizer(config) -> None:
    """Build the optimizer and schedule on a stand-in parameter: a missing package or a bad setting fails now."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": config.train_learning_rate}]
    te_rate = config.train_textencoder_learning_rate
    if te_rate and "BASE" in config.network_blocks:
        groups.append({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": te_rate})
    build_training_optimizer(config, groups, config.train_iterations)
