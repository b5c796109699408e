"""LoRA training data: images found, captioned, bucketed, VAE-encoded once, then served in batches.

Latents are computed before training (the VAE never runs during it), kept in memory and, with
`latent_cache_dir`, also on disk for later runs; each batch holds samples of one frame so they
stack into one tensor.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from traintrain.data.buckets import BucketAssignment, BucketPlan
from traintrain.data.captions import image_caption, tag_frequency
from traintrain.data.images import TRANSPARENT_BACKGROUND, BadImage, LoadedImage, find_images, load_image
from traintrain.data.latent_cache import LatentCache, file_digest
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


def read_images(directory: str, trigger: str, report: Reporter, *, use_filename: bool = False,
                background: tuple[int, int, int] | None = None) -> tuple[list[ImageRecord], list[str]]:
    """Every usable image with its caption; unreadable images are reported and skipped.

    `use_filename`: the file name's tags replace the caption file (image_use_filename_as_tag);
    `background`: transparent images are composited onto this colour (see `load_image`).
    """
    root = Path(directory)
    records, skipped = [], []
    for path in find_images(root):
        try:
            image = load_image(path, background=background)
        except BadImage as exc:
            report(Message(f"skipped: {exc}", "warning"))
            skipped.append(str(path))
            continue
        caption = image_caption(path, trigger, use_filename)
        records.append(ImageRecord(path, path.relative_to(root).as_posix(), image, caption))
    if not records:
        raise UserError(f"no usable image in {root}: add .png/.jpg/.webp images (see the warnings above)")
    return records, skipped


def image_background(config) -> tuple[int, int, int] | None:
    """The colour transparent images are composited onto, or None to keep their hidden colours."""
    return TRANSPARENT_BACKGROUND if config.image_use_transparent_background_ajust else None


def bucket_plan(config) -> BucketPlan:
    return BucketPlan.build(
        tuple(config.image_size), config.image_buckets_step, config.image_min_length, config.image_max_ratio
    )


def assign_images(config, plan: BucketPlan, records: list[ImageRecord], report: Reporter) -> BucketAssignment:
    """The frames of every image under the config's settings; images left without one are reported."""
    sizes = {r.name: r.image.image.size for r in records}
    assignment = plan.plan(
        sizes, config.sub_image_num, config.image_mirroring, config.image_num_multiply, config.image_disable_upscale
    )
    for name in assignment.unused_images:
        width, height = sizes[name]
        report(Message(
            f"skipped: {name} ({width}x{height}) is smaller than its frames and image_disable_upscale is on",
            "warning",
        ))
    if not assignment.total_samples:
        raise UserError(
            "every image is smaller than its frames: turn image_disable_upscale off or lower image_size"
        )
    return assignment


def image_to_tensor(image) -> torch.Tensor:
    """PIL RGB -> [3, H, W] in [-1, 1], the VAE's input range."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@torch.no_grad()
def encode_distributions(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's latent mean and std (float32, CPU) for a [B, 3, H, W] batch in [-1, 1]."""
    param = next(vae.parameters())
    dist = vae.encode(pixels.to(param.device, param.dtype)).latent_dist
    return dist.mean.float().cpu(), dist.std.float().cpu()


def sample_latents(mean: torch.Tensor, std: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """`latent_dist.sample() * scale`, drawn from our generator so runs repeat from a seed."""
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
    return (mean + std * noise) * scale


def encode_latents(vae, pixels: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """`vae.encode(x).latent_dist.sample() * scale` for a [B, 3, H, W] batch in [-1, 1]."""
    return sample_latents(*encode_distributions(vae, pixels), scale, generator)


def _distributions(vae, variants: list[LoadedImage], cache: LatentCache | None, keys: list[str]):
    """(mean, std) of each variant, from the cache where it has them, encoding the rest together."""
    found: list[tuple[torch.Tensor, torch.Tensor] | None] = (
        [cache.load(key) for key in keys] if cache else [None] * len(variants)
    )
    missing = [i for i, entry in enumerate(found) if entry is None]
    if missing:
        means, stds = encode_distributions(vae, torch.stack([image_to_tensor(variants[i].image) for i in missing]))
        for i, mean, std in zip(missing, means, stds, strict=False):
            found[i] = (mean, std)
            if cache:
                cache.store(keys[i], mean, std)
    return found


def build_training_data(config, vae, latent_scale: float, generator: torch.Generator, report: Reporter) -> TrainingData:
    """Every sample of the plan, encoded before training so the loop never waits on the VAE.

    Each (image, frame, mirrored) latent is drawn from the generator even when its distribution
    comes from the cache, so a cached run trains exactly like an uncached one with the same seed.
    """
    records, skipped = read_images(
        config.lora_data_directory, config.lora_trigger_word, report,
        use_filename=config.image_use_filename_as_tag, background=image_background(config),
    )
    plan = bucket_plan(config)
    assignment = assign_images(config, plan, records, report)
    cache = LatentCache.for_vae(config.latent_cache_dir, vae) if config.latent_cache_dir else None
    samples = []
    for record in records:
        frames = assignment.frames_by_image[record.name]
        digest = file_digest(record.path) if cache and frames else ""
        for frame in frames:
            fitted = record.image.fit(*frame)
            variants = [fitted, fitted.mirrored()] if config.image_mirroring else [fitted]
            keys = [cache.key(digest, frame, mirrored=index == 1) for index in range(len(variants))] if cache else []
            for variant, (mean, std) in zip(variants, _distributions(vae, variants, cache, keys), strict=False):
                latent = sample_latents(mean, std, latent_scale, generator)
                mask = _latent_mask(variant.mask, latent.shape[-2:]) if config.image_alpha_mask else None
                samples.append(Sample(latent, record.caption, frame, mask))
    if cache:
        report(Message(f"latent cache {cache.folder}: {cache.hits} reused, {cache.misses} encoded"))
    used = [r.caption for r in records if assignment.frames_by_image[r.name]]
    return TrainingData(samples * config.image_num_multiply, assignment, plan, tag_frequency(used), skipped)


def _latent_mask(mask, latent_hw) -> torch.Tensor | None:
    if mask is None:
        return None
    tensor = torch.tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=tuple(latent_hw), mode="area")[0]


class Framed(Protocol):
    frame: tuple[int, int]  # (width, height) in pixels


S = TypeVar("S", bound=Framed)  # Sample, or a mode's own samples (Difference's image pairs)


class BucketBatches(Generic[S]):
    """Endless batches of same-frame samples, reshuffled every epoch, reproducible from a seed."""

    def __init__(self, samples: list[S], batch_size: int, seed: int):
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

    def get_state(self) -> dict:
        """The shuffle position: the random state and the batches left of this epoch (resumable states)."""
        return {"random": self.random.getstate(), "queue": [list(batch) for batch in self._queue]}

    def set_state(self, state: dict) -> None:
        self.random.setstate(state["random"])
        self._queue = [list(batch) for batch in state["queue"]]

    def next(self) -> list[S]:
        if not self._queue:
            self._queue = self._epoch()
        return [self.samples[i] for i in self._queue.pop(0)]
