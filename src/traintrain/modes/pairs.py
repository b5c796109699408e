"""Image pairs for Difference and (Multi-)ADDifT: same-size checks, shared frames, latents, masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from traintrain.data.buckets import BucketPlan
from traintrain.data.captions import image_caption
from traintrain.data.dataset import encode_latents, image_to_tensor
from traintrain.data.images import IMAGE_EXTENSIONS, LoadedImage, find_images, load_image
from traintrain.errors import UserError

# Pixel differences below this (on a 0..1 scale) count as "unchanged" for the difference mask.
MASK_THRESHOLD = 0.04


@dataclass
class PairSample:
    original: torch.Tensor  # latent [4, h, w]
    target: torch.Tensor
    frame: tuple[int, int]  # (width, height) in pixels
    caption: str = ""
    mask: torch.Tensor | None = None  # [1, h, w] where the images differ


def load_pair(original: str | Path, target: str | Path,
              background: tuple[int, int, int] | None = None) -> tuple[LoadedImage, LoadedImage]:
    """Both images, which must have the same size (the copier and the difference share a frame).

    `background`: transparent images are composited onto it (image_use_transparent_background_ajust).
    """
    for label, path in (("original_image", original), ("target_image", target)):
        if not path or not Path(path).is_file():
            raise UserError(f"{label}: image '{path}' not found; give an existing image file")
    first, second = load_image(original, background), load_image(target, background)
    if first.image.size != second.image.size:
        (w1, h1), (w2, h2) = first.image.size, second.image.size
        raise UserError(
            f"original image {original} is {w1}x{h1} but target image {target} is {w2}x{h2}; "
            "both must have the same size"
        )
    return first, second


def pair_frame(config, size: tuple[int, int]) -> tuple[int, int]:
    """The bucket frame (nearest aspect ratio) both images of a pair are fitted to."""
    plan = BucketPlan.build(
        tuple(config.image_size), config.image_buckets_step, config.image_min_length, config.image_max_ratio
    )
    return plan.plan({"pair": size}, 0, False).frames_by_image["pair"][0]


def difference_mask(first: LoadedImage, second: LoadedImage, latent_hw) -> torch.Tensor:
    """1 where the pictures differ (any pixel of a latent cell), 0 where they are the same."""
    a = np.asarray(first.image, dtype=np.float32) / 255.0
    b = np.asarray(second.image, dtype=np.float32) / 255.0
    change = torch.from_numpy(np.abs(a - b).max(axis=2))[None, None]
    soft = torch.clamp(change / MASK_THRESHOLD, 0.0, 1.0)
    return F.adaptive_max_pool2d(soft, tuple(latent_hw))[0]


def encode_pair(
    config, vae, latent_scale, generator, first: LoadedImage, second: LoadedImage, caption: str, with_mask: bool
) -> list[PairSample]:
    """Latents of a fitted pair (and of its mirror image when image_mirroring is on)."""
    frame = pair_frame(config, first.image.size)
    first, second = first.fit(*frame), second.fit(*frame)
    variants = [(first, second)] + ([(first.mirrored(), second.mirrored())] if config.image_mirroring else [])
    samples = []
    for a, b in variants:
        latents = encode_latents(
            vae, torch.stack([image_to_tensor(a.image), image_to_tensor(b.image)]), latent_scale, generator
        )
        mask = difference_mask(a, b, latents.shape[-2:]) if with_mask else None
        samples.append(PairSample(latents[0], latents[1], frame, caption, mask))
    return samples


def find_pairs(folder: str | Path, target_suffix: str) -> list[tuple[Path, Path]]:
    """Multi-ADDifT pairs: X.ext with X{target_suffix}.ext (any image extension) in one folder tree."""
    if not target_suffix:
        raise UserError("diff_target_name: must not be empty (e.g. _target)")
    images = find_images(folder)
    by_stem = {(p.parent, p.stem): p for p in images}
    pairs = []
    for path in images:
        if path.stem.endswith(target_suffix):
            continue
        target = by_stem.get((path.parent, path.stem + target_suffix))
        if target is not None:
            pairs.append((path, target))
    if not pairs:
        extensions = "/".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise UserError(
            f"no image pairs in {folder}: put X.png beside X{target_suffix}.png (any of {extensions}), "
            "or set diff_target_name"
        )
    return pairs


def pair_caption(path: Path, trigger: str, use_filename: bool = False) -> str:
    return image_caption(path, trigger, use_filename)
