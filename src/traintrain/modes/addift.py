"""ADDifT and Multi-ADDifT: learn the difference of image pairs directly, without a copier.

Both images of a pair get the same noise and timestep. The frozen model's prediction on one
noisy image is the target for the adapted model (at a fractional multiplier) on the other; every
other step the roles swap with a negative multiplier, so the adapter learns the direction of the
change and not the pictures. Timesteps sweep the tenths of [min, max] so every noise level is
covered evenly. On a flow-matching family (Flux) the pair is noised along the flow at the timestep's
sigma and the predictions are the transformer's flow (modes/objective.py).
"""

from __future__ import annotations

import torch

from traintrain.data.dataset import BucketBatches, image_background
from traintrain.modes.common import (
    build_network,
    fixed_conditionings,
    prompt_only_spec,
    stack_conditionings,
    train_result_network,
)
from traintrain.modes.denoising import fixed_noise_for, training_timesteps
from traintrain.modes.inputs import (
    FRAME_FIELDS,
    IMAGE_FOLDER_FIELDS,
    IMAGE_PAIR_FIELDS,
    check_folder_images_decode,
    check_image_folder,
    check_image_pair,
    check_image_pair_decodes,
)
from traintrain.modes.objective import add_noise, predict, prediction_loss
from traintrain.modes.pairs import encode_pair, find_pairs, load_pair, pair_caption
from traintrain.modes.registry import ModeOutcome, TrainingMode, register
from traintrain.training.events import Message

FORWARD_MULTIPLIER = 0.25


def sweep_range(step: int, low: int, high: int) -> tuple[int, int]:
    """The tenth of [low, high) that step pair k uses: both steps of a pair share it."""
    tenth = ((step - 1) // 2) % 10
    span = (high - low) / 10
    start = int(low + span * tenth)
    end = max(start + 1, int(low + span * (tenth + 1)))
    return min(start, 999), min(end, 1000)


def addift_loss_fn(components, network, config, run, batches: BucketBatches, conds):
    """`conds[i]` is (original-side, target-side) conditioning of sample i of `batches`."""
    index_of = {id(s): i for i, s in enumerate(batches.samples)}
    scheduler = run.noise_scheduler
    fixed_noise = fixed_noise_for(config, run.seed)

    def compute_loss(step: int) -> torch.Tensor:
        chosen = batches.next()
        forward = step % 2 == 1
        original = torch.stack([s.original for s in chosen])
        target = torch.stack([s.target for s in chosen])
        noise = fixed_noise(original.shape) if fixed_noise else torch.randn(original.shape, generator=run.generator)
        low, high = sweep_range(step, config.train_min_timesteps, config.train_max_timesteps)
        timesteps = training_timesteps(len(chosen), low, high, run.generator, config.train_fixed_timsteps_in_batch)
        if config.diff_alt_ratio < 0 and not forward:
            original = target = noise
        reference_latent, adapted_latent = (original, target) if forward else (target, original)
        shard = run.processes.shard  # data-parallel: the UNet runs on this process's share of the batch
        reference_latent, adapted_latent, noise, timesteps = (
            shard(value) for value in (reference_latent, adapted_latent, noise, timesteps)
        )
        reference_cond = stack_conditionings([conds[index_of[id(s)]][0] for s in chosen]).map(shard)
        adapted_cond = stack_conditionings([conds[index_of[id(s)]][1] for s in chosen]).map(shard)
        with torch.no_grad():
            network.set_enabled(False)
            reference = predict(
                components, add_noise(components, scheduler, reference_latent, noise, timesteps), timesteps,
                reference_cond, config,
            )
            network.set_enabled(True)
        network.set_multiplier(FORWARD_MULTIPLIER if forward else -FORWARD_MULTIPLIER * abs(config.diff_alt_ratio))
        prediction = predict(
            components, add_noise(components, scheduler, adapted_latent, noise, timesteps), timesteps, adapted_cond,
            config,
        )
        network.set_multiplier(1.0)
        mask = None
        if config.diff_use_diff_mask and chosen[0].mask is not None:
            mask = shard(torch.stack([s.mask for s in chosen]))
        loss = prediction_loss(components, scheduler, prediction, reference, timesteps, config, mask)
        return run.processes.weigh(loss, len(chosen))

    return compute_loss


def _train(phase: str, config, components, run, samples, conds) -> ModeOutcome:
    network = build_network(components, prompt_only_spec(config), run, resume=config.network_resume)
    batches = BucketBatches(samples, config.train_batch_size, run.seed)
    compute_loss = addift_loss_fn(components, network, config, run, batches, conds)
    outcome = train_result_network(phase, network, config, compute_loss, components, run, data_order=batches)
    outcome.extras["samples"] = samples
    return outcome


def encode_image_pair(config, components, run, original, target, caption: str):
    """Latents of one pair (swapped with diff_revert_original_target), with its difference mask if asked."""
    if config.diff_revert_original_target:
        original, target = target, original
    first, second = load_pair(original, target, image_background(config))
    return encode_pair(config, components.vae, components.spec.latent_scale, run.generator, first, second, caption,
                       config.diff_use_diff_mask)


def train_addift(config, components, run) -> ModeOutcome:
    """One pair: Original and Target images, conditioned on the Original and Target prompts."""
    samples = encode_image_pair(config, components, run, config.original_image, config.target_image, "")
    pair_conds = tuple(fixed_conditionings(components, [config.original_prompt, config.target_prompt]))
    return _train("ADDifT", config, components, run, samples, [pair_conds] * len(samples))


def train_multi_addift(config, components, run) -> ModeOutcome:
    """Many pairs from a folder, each conditioned on its own caption (trigger word first)."""
    samples = []
    for original, target in find_pairs(config.lora_data_directory, config.diff_target_name):
        caption = pair_caption(original, config.lora_trigger_word, config.image_use_filename_as_tag)
        samples += encode_image_pair(config, components, run, original, target, caption)
    run.report(Message(f"Multi-ADDifT: {len(samples)} pair samples from {config.lora_data_directory}"))
    captions = sorted({s.caption for s in samples})
    encoded = dict(zip(captions, fixed_conditionings(components, captions), strict=False))
    conds = [(encoded[s.caption], encoded[s.caption]) for s in samples]
    return _train("Multi-ADDifT", config, components, run, samples, conds)


ADDIFT_FIELDS = ("diff_alt_ratio", "diff_use_diff_mask")


@register
class ADDifTMode(TrainingMode):
    frozen_passes = 1  # the target: the frozen model's prediction
    name = "ADDifT"
    summary = "from two images and their prompts: learn the change between them directly, without a copier"
    fields = IMAGE_PAIR_FIELDS + FRAME_FIELDS + ADDIFT_FIELDS + ("original_prompt", "target_prompt")
    phases = ("ADDifT",)
    order = 3

    def check_inputs(self, config) -> None:
        check_image_pair(config)

    def check_images(self, config) -> None:
        check_image_pair_decodes(config)

    def train(self, config, components, run) -> ModeOutcome:
        return train_addift(config, components, run)


@register
class MultiADDifTMode(TrainingMode):
    frozen_passes = 1  # the target: the frozen model's prediction
    name = "Multi-ADDifT"
    summary = "ADDifT over a folder of image pairs (X.png and X_target.png), each with its caption"
    fields = (
        IMAGE_FOLDER_FIELDS
        + FRAME_FIELDS
        + ADDIFT_FIELDS
        + (
            "diff_target_name",
            "diff_revert_original_target",
            "diff_use_fixed_noise",
        )
    )
    phases = ("Multi-ADDifT",)
    order = 4

    def check_inputs(self, config) -> None:
        check_image_folder(config)
        find_pairs(config.lora_data_directory, config.diff_target_name)

    def check_images(self, config) -> None:
        check_folder_images_decode(config)

    def train(self, config, components, run) -> ModeOutcome:
        return train_multi_addift(config, components, run)
