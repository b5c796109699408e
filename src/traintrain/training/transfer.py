"""Host-to-GPU copies that do not wait for the GPU.

A plain `tensor.to("cuda")` from ordinary (pageable) host memory makes PyTorch synchronize the
stream, so every per-step input (noisy latents, timesteps, text embeddings, masks, SNR table) would
drain the GPU's queue once per tensor and step. From page-locked memory with `non_blocking=True` the
copy is queued behind the work already there and the host runs ahead. PyTorch's caching host
allocator keeps the page-locked blocks, and keeps each one alive until its copy has finished.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`tensor` on `device` (and in `dtype`, converted there, after the copy); queued, not waited for,
    when it goes from the host to a GPU."""
    device = torch.device(device)
    if tensor.device.type == "cpu" and device.type == "cuda":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    else:
        tensor = tensor.to(device)
    return tensor if dtype is None else tensor.to(dtype)
