"""Where and in what precision training runs, seeds, and the training noise schedule."""

from __future__ import annotations

import secrets

import torch
from diffusers import DDPMScheduler

from traintrain.config import Precision
from traintrain.models.families import NOISE_SCHEDULE
from traintrain.training.events import Message, Reporter

DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


def resolve_dtype(precision: Precision, device: torch.device, what: str, report: Reporter) -> torch.dtype:
    """fp16 needs a GPU; on the CPU it falls back to fp32 with a warning instead of crashing."""
    dtype = DTYPES[precision]
    if dtype == torch.float16 and device.type == "cpu":
        report(Message(f"{what}: fp16 is not supported on the CPU; using fp32", "warning"))
        return torch.float32
    return dtype


def choose_seed(requested: int) -> int:
    """-1 means random; the seed actually used is returned so it can be recorded."""
    return secrets.randbelow(2**31 - 1) if requested < 0 else requested


def noise_scheduler(v_prediction: bool) -> DDPMScheduler:
    return DDPMScheduler(**NOISE_SCHEDULE, prediction_type="v_prediction" if v_prediction else "epsilon")


def freeze_model(components, device: torch.device, dtype: torch.dtype, gradient_checkpointing: bool,
                 vae_dtype: torch.dtype | None = None) -> None:
    """Frozen base weights in the model precision (the VAE in its own: fp16 VAEs can overflow)."""
    for part in [components.unet, components.vae, *components.text_encoders]:
        part.requires_grad_(False)
        part.eval()
        part.to(device, vae_dtype if part is components.vae and vae_dtype is not None else dtype)
    if gradient_checkpointing:
        components.unet.enable_gradient_checkpointing()
        components.unet.train()  # diffusers only checkpoints in training mode
        for encoder in components.text_encoders:
            # transformers 5 renamed it; the old name still works there but warns
            enable = getattr(encoder, "activation_checkpointing_enable", None) or encoder.gradient_checkpointing_enable
            enable()
            encoder.train()
