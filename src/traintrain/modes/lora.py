"""LoRA mode: learn from a folder of captioned images with the standard denoising loss."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch

from traintrain.data.dataset import BucketBatches, build_training_data
from traintrain.data.plan_report import plan_lines
from traintrain.models.encoder_offload import t5_encoder
from traintrain.models.encoding import Conditioning, encode_prompts, encode_t5
from traintrain.models.families import Family
from traintrain.modes.common import build_network, report_qwen3_not_trained, train_result_network
from traintrain.modes.inputs import FRAME_FIELDS, IMAGE_FOLDER_FIELDS, check_folder_images_decode, check_image_folder
from traintrain.modes.objective import image_step_loss
from traintrain.modes.registry import ModeOutcome, TrainingMode, register
from traintrain.networks.network import NetworkSpec
from traintrain.training.events import Message


class TextCache:
    """Caption embeddings computed once when the text encoder is frozen."""

    def __init__(self, components, captions):
        self.components = components
        self.by_caption = {}
        with torch.no_grad():
            for caption in sorted(set(captions)):
                cond = encode_prompts(components, [caption])
                self.by_caption[caption] = (
                    cond.hidden[0].float().cpu(),
                    None if cond.pooled is None else cond.pooled[0].float().cpu(),
                    None if cond.mask is None else cond.mask[0].cpu(),
                )
            empty = encode_prompts(components, [""])
        self.empty_chunk = empty.hidden[0].float().cpu()

    def __call__(self, captions: list[str]) -> Conditioning:
        """Cached embeddings of a batch; SD's chunked ones padded with empty chunks to the longest (Z-Image's
        have one fixed length and a mask)."""
        hiddens = [self.by_caption[c][0] for c in captions]
        longest = max(h.shape[0] for h in hiddens)
        padded = []
        for hidden in hiddens:
            repeats = (longest - hidden.shape[0]) // self.empty_chunk.shape[0]
            padded.append(torch.cat([hidden] + [self.empty_chunk] * repeats) if repeats else hidden)
        pooled = [self.by_caption[c][1] for c in captions]
        masks = [self.by_caption[c][2] for c in captions]
        return Conditioning(torch.stack(padded), None if pooled[0] is None else torch.stack(pooled),
                            None if masks[0] is None else torch.stack(masks))


class T5Cache:
    """T5's states of each caption, computed once, when the CLIP encoders of Flux / SD3 train: each step encodes
    its captions with the CLIPs' adapters on and takes T5's part from here."""

    def __init__(self, components, captions):
        self.components = components
        with torch.no_grad():
            self.by_caption = {caption: _t5_states(components, caption) for caption in sorted(set(captions))}

    def __call__(self, captions: list[str]) -> Conditioning:
        return encode_prompts(self.components, captions, torch.stack([self.by_caption[c] for c in captions]))


def _t5_states(components, caption: str) -> torch.Tensor:
    states = encode_t5(components, [caption])
    assert states is not None  # T5Cache is built only where the model has T5
    return states[0].float().cpu()


def caption_encoder(components, network, captions: list[str]) -> Callable[[list[str]], Conditioning]:
    """How a step gets its captions' conditioning: all cached when the text encoders are frozen; with their
    adapters trained (block BASE) encoded every step, T5's states (Flux, SD3) still cached."""
    if not network.trains_text_encoder:
        return TextCache(components, captions)
    if t5_encoder(components) is not None:
        return T5Cache(components, captions)
    return functools.partial(encode_prompts, components)


def train_lora(config, components, run) -> ModeOutcome:
    """Cache latents (and caption embeddings), then train the adapter for exactly train_iterations steps."""
    data = build_training_data(config, components.vae, components.spec.latent_scale, run.generator, run.report)
    for line in plan_lines(data.plan, data.assignment, per_image=config.logging_verbose):
        run.report(Message(line))
    # kohya's layout, {dataset folder: {tag: count}}, which A1111's metadata panel reads
    run.writer.tag_frequency = {Path(config.lora_data_directory).name: data.tag_frequency}
    run.writer.num_images = len(data.assignment.used_images) * config.image_num_multiply

    spec = NetworkSpec.from_config(config)
    network = build_network(components, spec, run, resume=config.network_resume)
    if spec.trains_text_encoder and components.family is Family.ZIMAGE:
        report_qwen3_not_trained(run, "block BASE")
    if components.spec.flow_matching and config.train_snr_gamma > 0:
        run.report(Message(f"{components.family.value}: train_snr_gamma does not apply to the flow-matching "
                           "objective; ignored", "warning"))
    encode_captions = caption_encoder(components, network, [s.caption for s in data.samples])
    batches = BucketBatches(data.samples, config.train_batch_size, run.seed)
    scheduler = run.noise_scheduler

    def compute_loss(step: int) -> torch.Tensor:
        samples = batches.next()
        latents = torch.stack([s.latent for s in samples])
        captions = [s.caption for s in samples]
        cond = encode_captions(captions)
        masks = [s.mask for s in samples]
        mask = (
            None
            if all(m is None for m in masks)
            else torch.stack([m if m is not None else torch.ones_like(latents[0, :1]) for m in masks])
        )
        return image_step_loss(components, scheduler, latents, cond, config, run.generator, mask,
                               processes=run.processes)

    outcome = train_result_network("LoRA", network, config, compute_loss, components, run, data_order=batches)
    outcome.extras["data"] = data
    return outcome


@register
class LoRAMode(TrainingMode):
    name = "LoRA"
    summary = "learn from a folder of captioned images (denoising loss)"
    fields = (
        IMAGE_FOLDER_FIELDS
        + FRAME_FIELDS
        + (
            "sub_image_num",
            "image_num_multiply",
            "image_disable_upscale",
            "image_alpha_mask",
            "latent_cache_dir",
        )
    )
    phases = ("LoRA",)
    order = 0

    def check_inputs(self, config) -> None:
        check_image_folder(config)

    def check_images(self, config) -> None:
        check_folder_images_decode(config)

    def train(self, config, components, run) -> ModeOutcome:
        return train_lora(config, components, run)
