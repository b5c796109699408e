"""Where and in what precision training runs, seeds, and the training noise schedule."""

from __future__ import annotations

import secrets

import torch
from diffusers import DDPMScheduler

from traintrain.config import ModelPrecision, Precision
from traintrain.models.families import NOISE_SCHEDULE
from traintrain.models.quantize import WeightStorage, quantize_layers, tensor_bytes
from traintrain.training.compile import compile_denoiser
from traintrain.training.events import Message, Reporter, ignore

DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


# The 8-bit frozen-model precisions and how their weights are stored.
WEIGHT_STORAGE = {ModelPrecision.INT8: WeightStorage.INT8, ModelPrecision.FP8: WeightStorage.FP8}


def resolve_dtype(precision: Precision | ModelPrecision, device: torch.device, what: str,
                  report: Reporter) -> torch.dtype:
    """The compute dtype. fp16 needs a GPU; on the CPU it falls back to fp32 with a warning instead of
    crashing. 8-bit weights compute in bf16 on a GPU (fp16 could overflow, as the integer weights are
    scaled after the product) and in fp32 on the CPU, where bf16 products are slow."""
    if precision in WEIGHT_STORAGE:
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    dtype = DTYPES[Precision(precision.value)]
    if dtype == torch.float16 and device.type == "cpu":
        report(Message(f"{what}: fp16 is not supported on the CPU; using fp32", "warning"))
        return torch.float32
    return dtype


def choose_seed(requested: int) -> int:
    """-1 means random; the seed actually used is returned so it can be recorded."""
    return secrets.randbelow(2**31 - 1) if requested < 0 else requested


def noise_scheduler(v_prediction: bool) -> DDPMScheduler:
    return DDPMScheduler(**NOISE_SCHEDULE, prediction_type="v_prediction" if v_prediction else "epsilon")


def trainable_text_encoder(encoder) -> bool:
    """A CLIP encoder, which block BASE can adapt; T5 and Qwen3 are never trained, so they need no
    checkpointing and stay in eval mode."""
    from traintrain.networks.targeting import TEXT_ENCODER_CLASSES

    return any(type(module).__name__ in TEXT_ENCODER_CLASSES for module in encoder.modules())


def freeze_model(components, device: torch.device, dtype: torch.dtype, gradient_checkpointing: bool,
                 vae_dtype: torch.dtype | None = None, *, weights: ModelPrecision | None = None,
                 report: Reporter | None = None, compiled: bool = False) -> None:
    """Frozen base weights in the model precision (the VAE in its own: fp16 VAEs can overflow).

    With `weights` int8 or fp8, the UNet's Linear and Conv2d layers and the text encoders' Linear
    layers are stored in 8 bits (models/quantize.py) and compute in `dtype`; the VAE, which only
    encodes the images once, stays in `vae_dtype`.
    With `compiled` (train_compile) the denoiser's training passes run under torch.compile
    (training/compile.py), or eagerly after a warning where that cannot work.
    """
    storage = WEIGHT_STORAGE.get(weights) if weights is not None else None
    for part in [components.denoiser, components.vae, *components.text_encoders]:
        part.requires_grad_(False)
        part.eval()
        if storage is not None and part is not components.vae:
            quantize_layers(part, storage, device, convolutions=part is components.denoiser)
        part.to(device, vae_dtype if part is components.vae and vae_dtype is not None else dtype)
    if storage is not None and report is not None:
        held = sum(tensor_bytes(part) for part in [components.denoiser, *components.text_encoders])
        report(Message(f"train_model_precision {storage.value}: UNet and text encoders hold {held / 2**20:.1f} MiB "
                       f"(8-bit weights, computing in {str(dtype).removeprefix('torch.')})"))
    if gradient_checkpointing:
        components.denoiser.enable_gradient_checkpointing()
        components.denoiser.train()  # diffusers only checkpoints in training mode
        for encoder in components.text_encoders:
            if not trainable_text_encoder(encoder):
                continue  # T5 (dropout 0.1) would drop out in training mode: random prompts; it never trains
            # transformers 5 renamed it; the old name still works there but warns
            enable = getattr(encoder, "activation_checkpointing_enable", None) or encoder.gradient_checkpointing_enable
            enable()
            encoder.train()
    if compiled:
        compile_denoiser(components.denoiser, device, report or ignore)
