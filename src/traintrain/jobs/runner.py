"""Run one training job: check everything that can fail early, load the model, run the mode, save.

`resume_job` continues an interrupted job from its state file (see training/checkpoint.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.modes.previews import render_previews
from traintrain.modes.registry import ModeOutcome, TrainingMode, every, get_mode
from traintrain.rendering import check_sampler
from traintrain.training.checkpoint import Checkpoints, load_state
from traintrain.training.context import RunContext
from traintrain.training.distributed import launched_processes
from traintrain.training.events import Message, Reporter, ignore
from traintrain.training.preflight import check_resources, check_training_options
from traintrain.training.run_logs import RunLogs
from traintrain.training.runtime import choose_seed, freeze_model, noise_scheduler, resolve_dtype
from traintrain.training.saving import LoraWriter, OutputPlan, check_save_name


@dataclass
class JobResult:
    path: Path
    losses: list[float]
    seed: int
    outcome: ModeOutcome


def check_inputs(config: TrainConfig) -> TrainingMode:
    """The inputs every mode needs and the mode's own, before a model is loaded."""
    if not config.model:
        raise UserError("no model given", "choose a .safetensors/.ckpt file or a diffusers folder", field="model")
    mode = get_mode(config.mode)
    mode.check_inputs(config)
    if config.network_resume and not Path(config.network_resume).is_file():
        raise UserError(f"'{config.network_resume}' not found", "give the LoRA file to continue from",
                        field="network_resume")
    if config.model_vae and not Path(config.model_vae).exists():
        raise UserError(f"'{config.model_vae}' not found", "give a VAE file (.safetensors/.pt/.ckpt) or a diffusers "
                        "VAE folder, or leave it empty for the model's own", field="model_vae")
    return mode


def run_job(config: TrainConfig, *, output_dir: Path = Path("output"), tokenizer_dir: str | None = None,
            report: Reporter = ignore, stop: threading.Event | None = None, resume: dict | None = None,
            lora_dir: Path | None = None) -> JobResult:
    """Train one job. Setting `stop` (from any thread) ends it after the current step with a save and a
    state (TrainingStopped); `resume` is a loaded state to continue from (see `resume_job`). The LoRA
    files (their previews and states too) go to `lora_dir` when given (a Web-UI's LoRA folder), the
    logs to `output_dir`."""
    from traintrain.models.external_vae import use_external_vae
    from traintrain.models.loading import load_model

    processes = launched_processes()  # accelerate launch: one of several data-parallel processes
    if not processes.main:
        report = ignore  # the main process reports, logs and writes
    mode = check_inputs(config)
    check_training_options(config)
    processes.check_batch(config.train_batch_size)
    if mode.preview_prompts(config):
        check_sampler(config.gen_noise_scheduler)
    plan = OutputPlan(Path(lora_dir or output_dir), check_save_name(config.output_name))
    final_suffix = continuation_suffix(config, resume)
    files = mode.planned_files(config)
    if resume:  # the interrupted run wrote its other files (Difference's copier) itself; see continuation_suffix
        files = [f"{plan.name}{final_suffix}.safetensors"] + [
            f"{plan.name}_{step}steps.safetensors" for step in every(config.save_per_steps, config.train_iterations)
            if step > resume["progress"]["step"]
        ] + ([f"{plan.name}{final_suffix}_preview.png"] if mode.preview_prompts(config) else [])
    plan.check_free(config.save_overwrite, files)
    check_resources(config, mode, plan, files)  # model headers, images, disk space for every file
    plan.check_writable()

    components = load_model(config.model, tokenizer_dir=tokenizer_dir, v_prediction=config.model_v_pred,
                            use_ema=config.model_use_ema, report=report)
    if config.model_vae:
        use_external_vae(components, config.model_vae, report)
    device = processes.device()
    model_dtype = resolve_dtype(config.train_model_precision, device, "train_model_precision", report)
    lora_dtype = resolve_dtype(config.train_lora_precision, device, "train_lora_precision", report)
    vae_dtype = resolve_dtype(config.train_vae_precision, device, "train_vae_precision", report)
    freeze_model(components, device, model_dtype, config.use_gradient_checkpointing, vae_dtype,
                 weights=config.train_model_precision, report=report, compiled=config.train_compile)

    seed = resume["job"]["seed"] if resume else processes.agree(choose_seed(config.train_seed))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if processes.main:
        report = RunLogs(config, Path(output_dir), seed, report)  # CSV, TensorBoard and JSON records of the run
    processes_note = f"; {processes.count} processes" if processes.distributed else ""
    report(Message(f"model {components.family.value} from {config.model}; seed {seed}; device {device.type}"
                   f"{processes_note}"))
    if components.prediction:
        level = "warning" if components.prediction.against_evidence else "info"
        report(Message(components.prediction.describe(), level))
    started_at = resume["job"]["started_at"] if resume else time.time()
    writer = LoraWriter(plan, config, components.spec, components.v_prediction, seed, report, started_at,
                        final_suffix=final_suffix, writes=processes.main)
    job = {"config": config.to_json_dict(), "output_dir": str(output_dir), "tokenizer_dir": tokenizer_dir,
           "seed": seed, "started_at": started_at, "lora_dir": str(lora_dir) if lora_dir else None}
    checkpoints = Checkpoints(job, generator, resume, stop, writes=processes.main)
    run = RunContext(device, model_dtype, lora_dtype, seed, generator, noise_scheduler(components.v_prediction), writer,
                     report, checkpoints, processes)
    if processes.main and (config.train_estimate or (config.train_estimate is None and device.type == "cuda")):
        _report_estimate(config, mode, components, run, processes.count)
    outcome = mode.train(config, components, run)
    if mode.preview_prompts(config):
        outcome.preview = render_previews(config, components, outcome.network, outcome.copier, run, suffix=final_suffix)
    checkpoints.discard_written()
    return JobResult(outcome.path, outcome.losses, seed, outcome)


def continuation_suffix(config: TrainConfig, resume: dict | None) -> str:
    """"_{N}steps" when a finished run (its save_state) is continued to N steps, else "".

    The first run's `{name}.safetensors` is kept; the network at N steps is saved, as a periodic save
    would be, as `{name}_{N}steps` (with its preview and, with save_state, its state).
    """
    return f"_{config.train_iterations}steps" if resume and resume.get("final") else ""


def resume_job(state_path: Path, *, output_dir: Path | None = None, tokenizer_dir: str | None = None,
               model: str | None = None, train_iterations: int | None = None, report: Reporter = ignore,
               stop: threading.Event | None = None) -> JobResult:
    """Continue a job from a state: an interrupted one's `{name}_{k}steps.state`, or a finished one's
    `{name}.state` (kept with save_state), with its settings, seed and position.

    `train_iterations` trains on to that many steps in all (a finished run needs more than it had).
    Relative paths in the settings are read from the current folder, as in the first run; `model`
    points to the base model when it has moved.
    """
    state = load_state(Path(state_path))
    job = state["job"]
    config = TrainConfig.from_json_dict(job["config"], source=str(state_path))
    if model:
        config = config.with_values(model=model)
    done = state["progress"]["step"]
    if train_iterations is not None:
        config = config.with_values(train_iterations=train_iterations)
    if state.get("final") and config.train_iterations <= done:
        raise UserError(f"the state {state_path} is of a finished run of {done} steps",
                        f"set train_iterations above {done} to train on", field="train_iterations")
    if config.train_iterations < done:
        raise UserError(f"the state {state_path} is at step {done}", f"set train_iterations to at least {done}",
                        field="train_iterations")
    report(Message(f"resuming from {state_path}: {state['phase']} step {state['progress']['step']}"))
    return run_job(
        config, output_dir=Path(output_dir or job["output_dir"]), tokenizer_dir=tokenizer_dir or job["tokenizer_dir"],
        report=report, stop=stop, resume=state, lora_dir=Path(job["lora_dir"]) if job.get("lora_dir") else None,
    )


def _report_estimate(config: TrainConfig, mode: TrainingMode, components, run: RunContext, processes: int) -> None:
    """Peak memory and seconds per step before the first step (training/estimate.py). Advisory: a model the
    meta-device trace cannot follow is reported, and training goes on."""
    from traintrain.networks.network import NetworkSpec
    from traintrain.training.estimate import estimate_run, report_estimate

    try:
        estimate = estimate_run(components, NetworkSpec.from_config(config), config, run.device, run.model_dtype,
                                run.lora_dtype, frozen_passes=mode.frozen_passes, processes=processes)
    except Exception as exc:  # noqa: BLE001 - the estimate must never stop a run
        run.report(Message(f"no memory estimate for this model ({type(exc).__name__}: {exc})", "warning"))
        return
    report_estimate(estimate, run.device, run.report)
