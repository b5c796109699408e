"""What every mode gets from the job besides its config and model: device, precision, seed, writer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from traintrain.training.checkpoint import Checkpoints
from traintrain.training.distributed import SINGLE, Processes
from traintrain.training.events import Reporter
from traintrain.training.saving import LoraWriter


@dataclass
class RunContext:
    """The job's shared state, built once by the runner and handed to the mode's `train`."""

    device: torch.device
    model_dtype: torch.dtype
    lora_dtype: torch.dtype
    seed: int
    generator: torch.Generator
    noise_scheduler: DDPMScheduler
    writer: LoraWriter
    report: Reporter
    checkpoints: Checkpoints  # resumable states and the stop request
    processes: Processes = SINGLE  # data-parallel training: this process's shard of every batch
