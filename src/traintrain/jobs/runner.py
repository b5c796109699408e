"""Run one training job: check everything that can fail early, load the model, run the mode, save.

`resume_job` continues an interrupted job from its state file (see training/checkpoint.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from traintrain.config import Mode, TrainConfig
from traintrain.data.images import find_images
from traintrain.errors import UserError
from traintrain.jobs.outputs import planned_files
from traintrain.modes.pairs import find_pairs
from traintrain.modes.previews import preview_prompts, render_previews
from traintrain.training.checkpoint import Checkpoints, load_state
from traintrain.training.events import Message, Reporter, ignore
from traintrain.training.preflight import check_resources, check_training_options
from traintrain.training.run_logs import RunLogs
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
    checkpoints: Checkpoints  # resumable states and the stop request


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
    if config.mode in (Mode.LORA, Mode.MULTI_ADDIFT):
        if not config.lora_data_directory:
            raise UserError(f"{config.mode.value} mode needs images: pass --data DIR (or set lora_data_directory)")
        if not Path(config.lora_data_directory).is_dir():
            raise UserError(f"image folder {config.lora_data_directory} does not exist: pass an existing --data DIR")
        find_images(config.lora_data_directory)  # an empty folder fails now, not after loading the model
    if config.mode == Mode.MULTI_ADDIFT:
        find_pairs(config.lora_data_directory, config.diff_target_name)
    if config.mode == Mode.ILECO and not config.original_prompt.strip():
        raise UserError("iLECO needs original_prompt (the concept to change); target_prompt empty = erase it")
    if config.mode in (Mode.DIFFERENCE, Mode.ADDIFT):
        for name in ("original_image", "target_image"):
            value = getattr(config, name)
            if not value or not Path(value).is_file():
                raise UserError(f"{config.mode.value} needs {name}: '{value}' is not an image file")
    if config.network_resume and not Path(config.network_resume).is_file():
        raise UserError(f"network_resume: '{config.network_resume}' not found; give the LoRA file to continue from")
    if config.mode == Mode.DIFFERENCE and config.diff_load_1st_pass and not Path(config.diff_load_1st_pass).is_file():
        raise UserError(f"diff_load_1st_pass: '{config.diff_load_1st_pass}' not found; give the copier LoRA file")


def mode_trainer(mode: Mode):
    from traintrain.modes.addift import train_addift, train_multi_addift
    from traintrain.modes.difference import train_difference
    from traintrain.modes.ileco import train_ileco
    from traintrain.modes.lora import train_lora

    return {
        Mode.LORA: train_lora, Mode.ILECO: train_ileco, Mode.DIFFERENCE: train_difference,
        Mode.ADDIFT: train_addift, Mode.MULTI_ADDIFT: train_multi_addift,
    }[mode]


def run_job(config: TrainConfig, *, output_dir: Path = Path("output"), tokenizer_dir: str | None = None,
            report: Reporter = ignore, stop: threading.Event | None = None, resume: dict | None = None) -> JobResult:
    """Train one job. Setting `stop` (from any thread) ends it after the current step with a save and a
    state (TrainingStopped); `resume` is a loaded state to continue from (see `resume_job`)."""
    from traintrain.models.loading import load_model

    check_inputs(config)
    check_training_options(config)
    plan = OutputPlan(Path(output_dir), check_save_name(config.output_name))
    # a resumed job wrote its other files (Difference's copier) itself before it stopped
    files = planned_files(config)
    plan.check_free(config.save_overwrite, [plan.path().name] if resume else files)
    check_resources(config, plan, files)  # model headers, images, disk space for every file
    plan.check_writable()

    components = load_model(
        config.model, tokenizer_dir=tokenizer_dir, v_prediction=config.model_v_pred or None
    )
    device = pick_device()
    model_dtype = resolve_dtype(config.train_model_precision, device, "train_model_precision", report)
    lora_dtype = resolve_dtype(config.train_lora_precision, device, "train_lora_precision", report)
    vae_dtype = resolve_dtype(config.train_vae_precision, device, "train_vae_precision", report)
    freeze_model(components, device, model_dtype, config.use_gradient_checkpointing, vae_dtype)

    seed = resume["job"]["seed"] if resume else choose_seed(config.train_seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    report = RunLogs(config, Path(output_dir), seed, report)  # CSV, TensorBoard and JSON records of the run
    report(Message(f"model {components.family.value} from {config.model}; seed {seed}; device {device.type}"))
    started_at = resume["job"]["started_at"] if resume else time.time()
    writer = LoraWriter(plan, config, components.spec, components.v_prediction, seed, report, started_at)
    job = {"config": config.to_json_dict(), "output_dir": str(output_dir), "tokenizer_dir": tokenizer_dir,
           "seed": seed, "started_at": started_at}
    checkpoints = Checkpoints(job, generator, resume, stop)
    run = RunContext(device, model_dtype, lora_dtype, seed, generator, noise_scheduler(components.v_prediction), writer,
                     report, checkpoints)
    outcome = mode_trainer(config.mode)(config, components, run)
    if preview_prompts(config):
        outcome["preview"] = render_previews(config, components, outcome, run)
    checkpoints.discard_written()
    return JobResult(outcome["path"], outcome["losses"], seed, outcome)


def resume_job(state_path: Path, *, output_dir: Path | None = None, tokenizer_dir: str | None = None,
               model: str | None = None, report: Reporter = ignore, stop: threading.Event | None = None) -> JobResult:
    """Continue an interrupted job from `{name}_{k}steps.state`: its settings, seed and position.

    Relative paths in the settings are read from the current folder, as in the first run; `model`
    points to the base model when it has moved.
    """
    state = load_state(Path(state_path))
    job = state["job"]
    config = TrainConfig.from_json_dict(job["config"], source=str(state_path))
    if model:
        config = config.with_values(model=model)
    report(Message(f"resuming from {state_path}: {state['phase']} step {state['progress']['step']}"))
    return run_job(
        config, output_dir=Path(output_dir or job["output_dir"]), tokenizer_dir=tokenizer_dir or job["tokenizer_dir"],
        report=report, stop=stop, resume=state,
    )
