"""Difference (copy machine): a copier LoRA learns the Original image; frozen and still applied,
it carries a second LoRA that learns the Target image. The second LoRA alone is the result: it
holds only what differs between the two images. Both passes train with LoRA mode's loss of the
model's family (denoising, or flow matching on Flux: modes/objective.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from traintrain.data.dataset import image_background
from traintrain.errors import UserError
from traintrain.models.encoder_offload import encoder_offloaded
from traintrain.modes.common import (
    build_network,
    fixed_conditionings,
    parameter_groups,
    prompt_only_spec,
    repeat_conditioning,
    train_result_network,
)
from traintrain.modes.denoising import fixed_noise_for
from traintrain.modes.inputs import FRAME_FIELDS, IMAGE_PAIR_FIELDS, check_image_pair, check_image_pair_decodes
from traintrain.modes.objective import image_step_loss
from traintrain.modes.pairs import encode_pair, load_pair
from traintrain.modes.registry import ModeOutcome, TrainingMode, register
from traintrain.networks.kohya_format import load_lora
from traintrain.training.checkpoint import SeededRandom
from traintrain.training.events import Message
from traintrain.training.loop import TrainingTask, run_loop


def image_loss_fn(components, config, run, latents: list[torch.Tensor], cond):
    """LoRA mode's loss on one image (and its mirror): a batch of train_batch_size draws of it.

    Returns the loss and the picker of the draws (its position is kept in resumable states).
    """
    picker = SeededRandom(run.seed)
    batch_cond = repeat_conditioning(cond, config.train_batch_size)
    fixed_noise = fixed_noise_for(config, run.seed)

    def compute_loss(step: int) -> torch.Tensor:
        batch = torch.stack([picker.choice(latents) for _ in range(config.train_batch_size)])
        noise = fixed_noise(batch.shape) if fixed_noise else None
        return image_step_loss(
            components, run.noise_scheduler, batch, batch_cond, config, run.generator, noise=noise,
            processes=run.processes,
        )

    return compute_loss, picker


def prepare_pair(config, components, run):
    original, target = config.original_image, config.target_image
    if config.diff_revert_original_target:
        original, target = target, original
    first, second = load_pair(original, target, image_background(config))
    samples = encode_pair(config, components.vae, components.spec.latent_scale, run.generator, first, second, "", False)
    (cond,) = fixed_conditionings(components, [config.original_prompt])
    run.report(Message(f"Difference: images fitted to {samples[0].frame[0]}x{samples[0].frame[1]}"))
    return samples, cond


def train_copier(config, components, run, samples, cond):
    """Pass 1, or the copier loaded from diff_load_1st_pass (the original silently trained from zero)."""
    copier = build_network(components, prompt_only_spec(config), run)
    if config.diff_load_1st_pass:
        tensors, _ = load_lora(config.diff_load_1st_pass)
        copier.load_tensors(tensors, source=config.diff_load_1st_pass)
        run.report(Message(f"copier loaded from {config.diff_load_1st_pass}"))
        return copier, [], []
    compute_loss, picker = image_loss_fn(components, config, run, [s.original for s in samples], cond)
    result_only = config.diff_1st_pass_only  # the copier is the job's result
    suffix = "" if result_only else "_copy"
    saved: list[Path] = []

    def save_final() -> Path:
        saved.append(run.writer.save(copier, suffix=suffix, steps=config.train_iterations))
        return saved[-1]

    task = TrainingTask(
        "copier",
        parameter_groups(copier, config),
        compute_loss,
        config.train_iterations,
        on_save=lambda step: run.writer.save(copier, suffix=f"{suffix}_{step}steps", steps=step),  # used by stops
        data_order=picker,
        checkpoints=run.checkpoints,
        on_final_save=save_final if result_only or config.diff_save_1st_pass else None,
        keep_final_state=result_only and config.save_state,
        processes=run.processes,
    )
    with encoder_offloaded(components):  # the prompts are encoded: T5 / Qwen3 wait on the CPU, as in the other loops
        result = run_loop(task, config, run.report)
    return copier, result.losses, saved


def train_difference(config, components, run) -> ModeOutcome:
    samples, cond = prepare_pair(config, components, run)
    copier, copier_losses, saved = train_copier(config, components, run, samples, cond)
    if config.diff_1st_pass_only:
        path = saved[-1] if saved else run.writer.save(copier, steps=config.train_iterations)  # a loaded copier
        return ModeOutcome(path, copier_losses, copier, extras={"copier_losses": copier_losses, "samples": samples})
    copier.requires_grad_(False)  # frozen, but stays applied at multiplier 1 under the difference LoRA

    second = config.for_second_pass()
    difference = build_network(components, prompt_only_spec(second), run, resume=second.network_resume)
    compute_loss, picker = image_loss_fn(components, second, run, [s.target for s in samples], cond)
    run.writer.config = second
    outcome = train_result_network(
        "difference", difference, second, compute_loss, components, run, copier=copier, data_order=picker
    )
    outcome.extras.update(copier_losses=copier_losses, samples=samples, conditioning=cond)
    return outcome


@register
class DifferenceMode(TrainingMode):
    name = "Difference"
    summary = "copy machine: from two images, a slider LoRA that carries only their difference"
    fields = (
        IMAGE_PAIR_FIELDS
        + FRAME_FIELDS
        + (
            "original_prompt",
            "diff_save_1st_pass",
            "diff_1st_pass_only",
            "diff_load_1st_pass",
            "use_2nd_pass_settings",
            "second_pass",
        )
    )
    phases = ("copier", "difference")
    order = 2

    def check_inputs(self, config) -> None:
        check_image_pair(config)
        if config.diff_load_1st_pass and not Path(config.diff_load_1st_pass).is_file():
            raise UserError(
                f"'{config.diff_load_1st_pass}' not found", "give the copier LoRA file", field="diff_load_1st_pass"
            )

    def check_images(self, config) -> None:
        check_image_pair_decodes(config)

    def result_config(self, config):
        return config if config.diff_1st_pass_only else config.for_second_pass()

    def planned_files(self, config) -> list[str]:
        if config.diff_1st_pass_only:  # the copier is the result; no periodic files or previews
            return [f"{config.output_name}.safetensors"] + self.preview_files(config, periodic=False)
        files = super().planned_files(config)
        if config.diff_save_1st_pass:
            files.insert(
                files.index(f"{config.output_name}_preview.png") if self.preview_prompts(config) else len(files),
                f"{config.output_name}_copy.safetensors",
            )
        return files

    def train(self, config, components, run) -> ModeOutcome:
        return train_difference(config, components, run)
