"""LoRA mode: learn from a folder of captioned images with the standard denoising loss."""

from __future__ import annotations

import torch

from traintrain.data.dataset import BucketBatches, build_training_data
from traintrain.models.encoding import Conditioning, encode_prompts
from traintrain.modes.denoising import denoising_step_loss
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from traintrain.training.events import Message
from traintrain.training.loop import TrainingTask, run_loop


def describe_plan(data) -> list[str]:
    """The bucket plan as lines, printed before training starts."""
    frames = ", ".join(f"{w}x{h}" for w, h in data.plan.frames)
    lines = [f"frames: {frames}"]
    if data.plan.sub_frames:
        lines.append("sub frames: " + ", ".join(f"{w}x{h}" for w, h in data.plan.sub_frames))
    counts = ", ".join(f"{w}x{h}: {n}" for (w, h), n in data.assignment.samples_by_frame.items())
    lines.append(f"{data.assignment.total_samples} training samples ({counts})")
    return lines


class TextCache:
    """Caption embeddings computed once when the text encoder is frozen."""

    def __init__(self, components, captions):
        self.components = components
        self.by_caption = {}
        with torch.no_grad():
            for caption in sorted(set(captions)):
                cond = encode_prompts(components, [caption])
                self.by_caption[caption] = (cond.hidden[0].float().cpu(), None if cond.pooled is None else cond.pooled[0].float().cpu())
            empty = encode_prompts(components, [""])
        self.empty_chunk = empty.hidden[0].float().cpu()

    def batch(self, captions: list[str]) -> Conditioning:
        hiddens = [self.by_caption[c][0] for c in captions]
        longest = max(h.shape[0] for h in hiddens)
        padded = []
        for hidden in hiddens:
            repeats = (longest - hidden.shape[0]) // self.empty_chunk.shape[0]
            padded.append(torch.cat([hidden] + [self.empty_chunk] * repeats) if repeats else hidden)
        pooled = [self.by_caption[c][1] for c in captions]
        return Conditioning(torch.stack(padded), None if pooled[0] is None else torch.stack(pooled))


def train_lora(config, components, run) -> dict:
    """Cache latents (and caption embeddings), then train the adapter for exactly train_iterations steps."""
    data = build_training_data(config, components.vae, components.spec.latent_scale, run.generator, run.report)
    for line in describe_plan(data):
        run.report(Message(line))
    run.writer.tag_frequency = data.tag_frequency
    run.writer.num_images = len(data.assignment.frames_by_image)

    spec = NetworkSpec.from_config(config)
    network = AdapterNetwork(components, spec, run.lora_dtype).to(run.device).apply()
    text_cache = None if spec.trains_text_encoder else TextCache(components, [s.caption for s in data.samples])
    batches = BucketBatches(data.samples, config.train_batch_size, run.seed)
    scheduler = run.noise_scheduler

    def compute_loss(step: int) -> torch.Tensor:
        samples = batches.next()
        latents = torch.stack([s.latent for s in samples])
        captions = [s.caption for s in samples]
        cond = text_cache.batch(captions) if text_cache else encode_prompts(components, captions)
        masks = [s.mask for s in samples]
        mask = None if all(m is None for m in masks) else torch.stack(
            [m if m is not None else torch.ones_like(latents[0, :1]) for m in masks]
        )
        return denoising_step_loss(components, scheduler, latents, cond, config, run.generator, mask)

    groups = [{"params": network.unet_parameters(), "lr": config.train_learning_rate}]
    if network.text_encoder_parameters():
        groups.append({
            "params": network.text_encoder_parameters(),
            "lr": config.train_textencoder_learning_rate or config.train_learning_rate,
        })
    groups = [g for g in groups if g["params"]]
    task = TrainingTask(
        "LoRA", groups, compute_loss, config.train_iterations, config.save_per_steps,
        lambda step: run.writer.save(network, suffix=f"_{step}steps", steps=step),
    )
    result = run_loop(task, config, run.report)
    path = run.writer.save(network, steps=config.train_iterations)
    network.remove()
    return {"path": path, "losses": result.losses, "network": network, "data": data}
