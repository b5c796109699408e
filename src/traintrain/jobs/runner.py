"""Run one training job: check everything that can fail early, load the model, run the mode, save."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from traintrain.config import Mode, TrainConfig
from traintrain.data.images import find_images
from traintrain.errors import UserError
from traintrain.training.events import Message, Reporter, ignore
from traintrain.training.runtime import choose_seed, freeze_model, noise_scheduler, pick_device, resolve_dtype
from traintrain.training.saving import LoraWriter, OutputPlan, check_save_name


@dataclass
class RunContext:
    """What every mode needs besides the config and the model."""

    device: torch.device
    model_dtype: torch.dtype
    lora_dtype: torch.dtype
    seed: int
    generator: torch.Generator
    noise_scheduler: object
    writer: LoraWriter
    report: Reporter


@dataclass
class JobResult:
    path: Path
    losses: list[float]
    seed: int
    details: dict


def check_inputs(config: TrainConfig) -> None:
    """Mode inputs that must exist before a model is loaded."""
    if not config.model:
        raise UserError("no model given: pass --model PATH (a .safetensors/.ckpt file or a diffusers folder)")
    if config.mode == Mode.LORA:
        if not config.lora_data_directory:
            raise UserError("LoRA mode needs images: pass --data DIR (or set lora_data_directory)")
        if not Path(config.lora_data_directory).is_dir():
            raise UserError(f"image folder {config.lora_data_directory} does not exist: pass an existing --data DIR")
        find_images(config.lora_data_directory)  # an empty folder fails now, not after loading the model
    else:
        raise UserError(f"mode {config.mode.value} is not available in this version; use mode LoRA")


def run_job(config: TrainConfig, *, output_dir: Path = Path("output"), tokenizer_dir: str | None = None,
            report: Reporter = ignore) -> JobResult:
    from traintrain.models.loading import load_model
    from traintrain.modes.lora import train_lora

    check_inputs(config)
    plan = OutputPlan(Path(output_dir), check_save_name(config.output_name))
    plan.check_free(config.save_overwrite)
    plan.check_writable()

    components = load_model(
        config.model, tokenizer_dir=tokenizer_dir, v_prediction=config.model_v_pred or None
    )
    device = pick_device()
    model_dtype = resolve_dtype(config.train_model_precision, device, "train_model_precision", report)
    lora_dtype = resolve_dtype(config.train_lora_precision, device, "train_lora_precision", report)
    freeze_model(components, device, model_dtype, config.use_gradient_checkpointing)

    seed = choose_seed(config.train_seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    report(Message(f"model {components.family.value} from {config.model}; seed {seed}; device {device.type}"))
    writer = LoraWriter(plan, config, components.spec, components.v_prediction, seed, report, time.time())
    run = RunContext(device, model_dtype, lora_dtype, seed, generator, noise_scheduler(components.v_prediction), writer, report)
    outcome = train_lora(config, components, run)
    return JobResult(outcome["path"], outcome["losses"], seed, outcome)
