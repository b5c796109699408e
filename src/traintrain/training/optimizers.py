"""Every optimizer of the seed, each from its own library, with the quirks the loop must honour.

One table keeps, per name, the package to install, the class and the defaults the seed's setups
use, so adding an optimizer is one line. Two behaviours change the loop: AdaFactor's relative step
finds the lr itself (the lr schedule is then unused), and schedule-free optimizers hold the weights
to save only in eval mode. AdamMini is built from a model's named parameters rather than groups; it
gets ours under plain names, keeping each group's lr.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from traintrain.config import Optimizer
from traintrain.errors import UserError
from traintrain.training.keyword_settings import parse_settings
from traintrain.training.schedules import WarmedSchedule, build_scheduler, fixed_scheduler


@dataclass(frozen=True)
class OptimizerKind:
    package: str  # what `pip install` needs, named in the error when it is missing
    module: str
    attribute: str
    defaults: dict = field(default_factory=dict)
    schedule_free: bool = False
    adaptive: bool = False  # Prodigy / D-Adaptation: lr multiplies a step size they estimate (use ~1.0)
    named: bool = False  # AdamMini: takes a model (its named_parameters) instead of parameter groups


_BNB, _DADAPT, _SF, _PO = "bitsandbytes", "dadaptation", "schedulefree", "pytorch-optimizer"
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
    Optimizer.CAME: OptimizerKind(_PO, "pytorch_optimizer", "CAME"),
    Optimizer.ADAM: OptimizerKind("torch", "torch.optim", "Adam"),
    Optimizer.PAGED_ADAMW: OptimizerKind(_BNB, "bitsandbytes.optim", "PagedAdamW"),
    Optimizer.PAGED_ADAMW32BIT: OptimizerKind(_BNB, "bitsandbytes.optim", "PagedAdamW32bit"),
    Optimizer.PAGED_LION8BIT: OptimizerKind(_BNB, "bitsandbytes.optim", "PagedLion8bit"),
    Optimizer.TIGER: OptimizerKind(_PO, "pytorch_optimizer", "Tiger"),
    Optimizer.ADAM_MINI: OptimizerKind(_PO, "pytorch_optimizer", "AdamMini", named=True),
}


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
    scheduler: torch.optim.lr_scheduler.LRScheduler | WarmedSchedule
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

    def step_schedule(self, loss_average: float | None) -> None:
        """After each optimizer step; reduce_on_plateau decides on the loss average (EMA)."""
        if isinstance(self.scheduler, WarmedSchedule):
            self.scheduler.step(loss_average)
        else:
            self.scheduler.step()

    @property
    def follows_loss(self) -> bool:
        """reduce_on_plateau reads the loss average after every step."""
        return isinstance(self.scheduler, WarmedSchedule) and self.scheduler.plateau

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
        if _fusable(kind, settings, param_groups):
            arguments["fused"] = True  # in the description too, for the verbose log
        optimizer = cls(NamedParameters(param_groups) if kind.named else param_groups, **arguments)
    except (TypeError, ValueError) as exc:
        raise UserError(f"train_optimizer {name.value} with settings {settings}: {exc}") from None
    if kind.named:
        _keep_group_lrs(optimizer, param_groups)

    notes = []
    scheduler: torch.optim.lr_scheduler.LRScheduler | WarmedSchedule
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
        if config.train_lr_scheduler_settings.strip():
            settings_text = config.train_lr_scheduler_settings
            schedule += f", settings {parse_settings(settings_text, 'train_lr_scheduler_settings')}"
    if kind.adaptive and config.train_learning_rate < 0.1:
        notes.append(f"{name.value} estimates the step size; train_learning_rate multiplies it and is usually 1.0")
    description = f"optimizer {kind.module}.{kind.attribute} {arguments}; lr schedule: {schedule}"
    return TrainingOptimizer(optimizer, scheduler, kind.schedule_free, relative_step, notes, description)


FUSED_DEVICES = ("cuda", "cpu")  # where torch's fused Adam, AdamW and SGD kernels run


def _fusable(kind: OptimizerKind, settings: dict, param_groups: list[dict]) -> bool:
    """torch's own optimizers step with torch's fused kernel: one kernel for all of a LoRA's hundreds of tensors,
    where the default steps them a few ops each (6x faster on the CPU; on a GPU fewer launches than foreach).
    Not where the settings choose an implementation (fused / foreach) themselves, nor for parameters without
    the kernel (another device; torch would only refuse at the first step)."""
    params = [p for group in param_groups for p in group["params"]]
    return (kind.package == "torch" and not {"fused", "foreach"} & settings.keys()
            and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params))


class NamedParameters:
    """Our parameter groups as the model AdamMini asks for: it only reads `named_parameters()`.

    Plain names put every tensor in Adam-mini's general block (one second moment per tensor); its
    embedding and attention rules match names of language models, which LoRA tensors do not have.
    """

    def __init__(self, param_groups: list[dict]):
        self.param_groups = param_groups

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        for index, group in enumerate(self.param_groups):
            for number, param in enumerate(group["params"]):
                yield f"group{index}.param{number}", param


def _keep_group_lrs(optimizer, param_groups: list[dict]) -> None:
    """AdamMini makes one group per tensor with the default lr: give each its own group's lr."""
    rates = {id(param): group["lr"] for group in param_groups if "lr" in group for param in group["params"]}
    for group in optimizer.param_groups:
        rate = rates.get(id(group["params"][0]))
        if rate is not None:
            group["lr"] = rate


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
