"""T5 off the accelerator while training: on Flux and SD3 every mode has T5's states of its prompts cached before
the training loop starts (the whole conditioning, or T5's part of it while the CLIP encoders train), so T5-XXL,
about 9 GB in fp16, would sit idle in VRAM. It waits on the CPU instead and comes back for previews, which encode
their prompts through the pipeline's own T5 call.
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


@contextmanager
def t5_offloaded(components) -> Iterator[None]:
    """T5 on the CPU for the duration (the training loop, once the prompts are cached), back where it was after."""
    t5 = t5_encoder(components)
    if t5 is None:
        yield
        return
    home = _device(t5)
    _move(t5, OFFLOAD_DEVICE)
    try:
        yield
    finally:
        _move(t5, home)


@contextmanager
def t5_for_encoding(components) -> Iterator[None]:
    """T5 on the denoiser's device for the duration (previews encode prompts with it), then back where it was:
    what a preview rendered inside t5_offloaded calls."""
    t5 = t5_encoder(components)
    if t5 is None:
        yield
        return
    parked = _device(t5)
    _move(t5, _device(components.denoiser))
    try:
        yield
    finally:
        _move(t5, parked)


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
