"""The largest text encoder off the accelerator while training: T5-XXL on Flux and SD3 (about 9 GB in fp16),
Qwen3-4B on Z-Image (about 8 GB in bf16). Every mode has that encoder's states of its prompts cached before the
training loop starts (the whole conditioning, or T5's part of it while the CLIP encoders train; Z-Image's Qwen3
is never trained), so it would sit idle in VRAM. It waits on the CPU instead and comes back for previews, which
encode their prompts through the pipeline's own call.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from traintrain.models.families import Family

OFFLOAD_DEVICE = torch.device("cpu")


def t5_encoder(components) -> nn.Module | None:
    """The model's T5: Flux's second text encoder, SD3's third (which may be absent); None elsewhere."""
    if components.family is Family.FLUX:
        return components.text_encoders[1]
    if components.family is Family.SD3 and len(components.text_encoders) > 2:
        return components.text_encoders[2]
    return None


def offloaded_encoder(components) -> nn.Module | None:
    """The text encoder that waits on the CPU while training: T5 (Flux, SD3), Qwen3 (Z-Image); None elsewhere
    (SD's CLIP encoders are small, and train with block BASE)."""
    if components.family is Family.ZIMAGE:
        return components.text_encoders[0]
    return t5_encoder(components)


@contextmanager
def encoder_offloaded(components) -> Iterator[None]:
    """The offloaded encoder on the CPU for the duration (the training loop, once the prompts are cached), back
    where it was after."""
    encoder = offloaded_encoder(components)
    if encoder is None:
        yield
        return
    home = _device(encoder)
    _move(encoder, OFFLOAD_DEVICE)
    try:
        yield
    finally:
        _move(encoder, home)


@contextmanager
def encoder_for_encoding(components) -> Iterator[None]:
    """The offloaded encoder on the denoiser's device for the duration (previews encode prompts with it), then
    back where it was: what a preview rendered inside encoder_offloaded calls."""
    encoder = offloaded_encoder(components)
    if encoder is None:
        yield
        return
    parked = _device(encoder)
    _move(encoder, _device(components.denoiser))
    try:
        yield
    finally:
        _move(encoder, parked)


def _move(model: nn.Module, device: torch.device) -> None:
    """Move unless it is there; leaving an accelerator returns the memory to the driver, not only to PyTorch's
    cache, so the VRAM it held shows as free."""
    was = _device(model)
    if was == device:
        return
    model.to(device)
    if was.type == "cuda":
        torch.cuda.empty_cache()


def _device(model: nn.Module) -> torch.device:
    # 8-bit layers hold their weights as buffers (models/quantize.py)
    return next(itertools.chain(model.parameters(), model.buffers())).device
