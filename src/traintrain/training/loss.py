"""Denoising loss: per-sample MSE, L1 or smooth L1, weighted by min-SNR (epsilon and v-prediction forms)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from traintrain.config import LossFunction
from traintrain.training.transfer import to_device

ELEMENTWISE = {LossFunction.MSE: F.mse_loss, LossFunction.L1: F.l1_loss, LossFunction.SMOOTH_L1: F.smooth_l1_loss}


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    a = to_device(alphas_cumprod, timesteps.device)[timesteps].float()
    return a / (1.0 - a)


def min_snr_weights(alphas_cumprod, timesteps, gamma: float, v_prediction: bool) -> torch.Tensor:
    """min(gamma/SNR, 1) for epsilon; min(SNR, gamma)/(SNR+1) for v-prediction."""
    value = snr(alphas_cumprod, timesteps)
    if v_prediction:
        return torch.clamp(value, max=gamma) / (value + 1.0)
    return torch.clamp(gamma / value, max=1.0)


def denoising_loss(prediction, target, timesteps, alphas_cumprod, *, snr_gamma: float, v_prediction: bool,
                   mask: torch.Tensor | None = None, loss_function: LossFunction = LossFunction.MSE) -> torch.Tensor:
    """Mean over the batch of the per-sample loss, optionally masked and SNR-weighted."""
    error = ELEMENTWISE[loss_function](prediction.float(), target.float(), reduction="none")
    if mask is not None:
        error = error * mask
    per_sample = error.mean(dim=list(range(1, error.ndim)))
    if snr_gamma > 0:
        per_sample = per_sample * min_snr_weights(alphas_cumprod, timesteps, snr_gamma, v_prediction)
    return per_sample.mean()
