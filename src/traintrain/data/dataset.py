"""LoRA training data: images found, captioned, bucketed, VAE-encoded once, then served in batches.

Latents are cached in memory (the VAE never runs during training); each batch holds samples of
one frame so they stack into one tensor.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from traintrain.data.buckets import BucketAssignment, BucketPlan
from traintrain.data.captions import compose_caption, read_caption, tag_frequency
from traintrain.data.images import BadImage, LoadedImage, find_images, load_image
from traintrain.errors import UserError
from traintrain.training.events import Message, Reporter


@dataclass
class Sample:
    latent: torch.Tensor  # [4, h/8, w/8], float32 on CPU
    caption: str
    frame: tuple[int, int]  # (width, height) in pixels
    mask: torch.Tensor | None = None  # [1, h/8, w/8] loss weight from the image's alpha


@dataclass
class ImageRecord:
    path: Path
    name: str  # relative path, for plans and messages
    image: LoadedImage
    caption: str


@dataclass
class TrainingData:
    samples: list[Sample]
    assignment: BucketAssignment
    plan: BucketPlan
    tag_frequency: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def read_images(directory: str, trigger: str, report: Reporter) -> tuple[list[ImageRecord], list[str]]:
    """Every usable image with its caption; unreadable images are reported and skipped."""
    root = Path(directory)
    records, skipped = [], []
    for path in find_images(root):
        try:
            image = load_image(path)
        except BadImage as exc:
            report(Message(f"skipped: {exc}", "warning"))
            skipped.append(str(path))
            continue
        caption = compose_caption(trigger, read_caption(path))
        records.append(ImageRecord(path, path.relative_to(root).as_posix(), image, caption))
    if not records:
        raise UserError(f"no usable image in {root}: add .png/.jpg/.webp images (see the warnings above)")
    return records, skipped


def image_to_tensor(image) -> torch.Tensor:
    """PIL RGB -> [3, H, W] in [-1, 1], the VAE's input range."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """`vae.encode(x).latent_dist.sample() * scale` for a [B, 3, H, W] batch in [-1, 1]."""
    param = next(vae.parameters())
    dist = vae.encode(pixels.to(param.device, param.dtype)).latent_dist
    noise = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32).to(dist.mean.device)
    latent = dist.mean.float() + dist.std.float() * noise
    return (latent * scale).cpu()


def build_training_data(config, vae, latent_scale: float, generator: torch.Generator, report: Reporter,
                        use_alpha_mask: bool = True) -> TrainingData:
    records, skipped = read_images(config.lora_data_directory, config.lora_trigger_word, report)
    plan = BucketPlan.build(
        tuple(config.image_size), config.image_buckets_step, config.image_min_length, config.image_max_ratio
    )
    sizes = {r.name: r.image.image.size for r in records}
    assignment = plan.plan(sizes, config.sub_image_num, config.image_mirroring)
    samples = []
    for record in records:
        for frame in assignment.frames_by_image[record.name]:
            fitted = record.image.fit(*frame)
            variants = [fitted, fitted.mirrored()] if config.image_mirroring else [fitted]
            pixels = torch.stack([image_to_tensor(v.image) for v in variants])
            latents = encode_latents(vae, pixels, latent_scale, generator)
            for variant, latent in zip(variants, latents):
                mask = _latent_mask(variant.mask, latent.shape[-2:]) if use_alpha_mask else None
                samples.append(Sample(latent, record.caption, frame, mask))
    return TrainingData(samples, assignment, plan, tag_frequency(r.caption for r in records), skipped)


def _latent_mask(mask, latent_hw) -> torch.Tensor | None:
    if mask is None:
        return None
    tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=tuple(latent_hw), mode="area")[0]


class BucketBatches:
    """Endless batches of same-frame samples, reshuffled every epoch, reproducible from a seed."""

    def __init__(self, samples: list[Sample], batch_size: int, seed: int):
        self.samples = samples
        self.batch_size = batch_size
        self.random = random.Random(seed)
        self._queue: list[list[int]] = []

    def _epoch(self) -> list[list[int]]:
        by_frame: dict[tuple[int, int], list[int]] = {}
        for index, sample in enumerate(self.samples):
            by_frame.setdefault(sample.frame, []).append(index)
        batches = []
        for frame in sorted(by_frame):
            indices = by_frame[frame]
            self.random.shuffle(indices)
            batches += [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        self.random.shuffle(batches)
        return batches

    def next(self) -> list[Sample]:
        if not self._queue:
            self._queue = self._epoch()
        return [self.samples[i] for i in self._queue.pop(0)]
