"""Pieces the modes share: building the trained network, its parameter groups, fixed conditioning."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import cast

import torch

from traintrain.choices import TEXT_ENCODER_BLOCK
from traintrain.models.encoder_offload import encoder_for_encoding, encoder_offloaded
from traintrain.models.encoding import Conditioning, encode_prompts
from traintrain.modes.registry import ModeOutcome
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from traintrain.training.events import Message
from traintrain.training.loop import TrainingTask, run_loop


def prompt_only_spec(config) -> NetworkSpec:
    """iLECO and Difference never train the text encoder (the seed: BASE is not used there)."""
    spec = NetworkSpec.from_config(config)
    return dataclasses.replace(spec, blocks=[b for b in spec.blocks if b != TEXT_ENCODER_BLOCK])


def build_network(components, spec: NetworkSpec, run, resume: str = "") -> AdapterNetwork:
    """The adapter, hooked in; `resume` (network_resume) continues from a saved file of the same shape."""
    network = AdapterNetwork(components, spec, run.lora_dtype)
    if resume:
        network.resume_from(resume)
    return network.to(run.device).apply()


def report_qwen3_not_trained(run, setting: str) -> None:
    """Z-Image's text encoder is Qwen3, with none of the CLIP layers block BASE trains (the original's targets do
    not match it either): said once at the start instead of training the transformer alone in silence."""
    run.report(Message(f"{setting}: Z-Image's Qwen3 text encoder is not trained (only CLIP text encoders are); "
                       "training the transformer only", "warning"))


def parameter_groups(network: AdapterNetwork, config) -> list[dict]:
    """UNet at the main lr; text encoder at its own lr (0 = main lr)."""
    groups = [{"params": network.unet_parameters(), "lr": config.train_learning_rate}]
    if network.text_encoder_parameters():
        groups.append({
            "params": network.text_encoder_parameters(),
            "lr": config.train_textencoder_learning_rate or config.train_learning_rate,
        })
    return [g for g in groups if g["params"]]


@torch.no_grad()
def fixed_conditionings(components, prompts: list[str]) -> list[Conditioning]:
    """Encode prompts once, padded to a common length so they can be batched together."""
    joint = encode_prompts(components, prompts)
    joint = joint.map(lambda tensor: tensor if tensor.dtype is torch.bool else tensor.float())
    return [joint.map(lambda tensor, i=i: tensor[i : i + 1].cpu()) for i in range(len(prompts))]


def repeat_conditioning(cond: Conditioning, batch: int) -> Conditioning:
    return cond.map(lambda tensor: tensor.expand(batch, *tensor.shape[1:]))


def stack_conditionings(conds: list[Conditioning]) -> Conditioning:
    # The conditionings come from one model: all have a pooled embedding (SDXL) or none has, a mask (Z-Image) or none.
    pooled = None if conds[0].pooled is None else torch.cat(cast(list[torch.Tensor], [c.pooled for c in conds]))
    mask = None if conds[0].mask is None else torch.cat(cast(list[torch.Tensor], [c.mask for c in conds]))
    return Conditioning(torch.cat([c.hidden for c in conds]), pooled, mask)


def train_result_network(
    phase: str, network, config, compute_loss, components, run, copier=None, data_order=None
) -> ModeOutcome:
    """Train the network whose file is the job's result: periodic saves and previews, final save.

    The modes have every prompt's states of the largest text encoder (T5, Z-Image's Qwen3) cached by now
    (models/encoder_offload.py): it waits on the CPU during the loop, comes back for previews, and is back on its
    device when training ends (the final previews use it).
    `data_order` (get_state/set_state) is the position of the mode's batches, kept in resumable states.
    """
    from traintrain.modes.previews import preview_prompts, render_previews

    def preview(step: int) -> None:
        with encoder_for_encoding(components):
            render_previews(config, components, network, copier, run, suffix=f"_{step}steps")

    task = TrainingTask(
        phase,
        parameter_groups(network, config),
        compute_loss,
        config.train_iterations,
        config.save_per_steps,
        lambda step: run.writer.save(network, suffix=f"_{step}steps", steps=step),
        config.preview_every_steps if preview_prompts(config) else 0,
        preview,
        data_order,
        run.checkpoints,
        processes=run.processes,
    )
    saved: list[Path] = []

    def save_final() -> Path:
        saved.append(run.writer.save(network, steps=config.train_iterations))
        return saved[-1]

    task.on_final_save = save_final
    task.keep_final_state = config.save_state
    with encoder_offloaded(components):
        result = run_loop(task, config, run.report)
    return ModeOutcome(saved[-1], result.losses, network, copier)
