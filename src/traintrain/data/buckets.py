"""Aspect-ratio buckets: the frame sizes images are resized into, and which frames each image gets.

Training batches must hold images of one size, so every image is resized and centre-cropped into
a frame of similar aspect ratio. Frames are ``(width, height)`` in pixels; the image size setting
is ``(height, width)`` because that order matters to iLECO (it draws its latent at that size).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from traintrain.errors import UserError

Frame = tuple[int, int]
"""A bucket size as (width, height) in pixels."""


def _check_grid(step: int, min_length: int, max_ratio: float) -> None:
    if step <= 0:
        raise UserError(f"image_buckets_step {step} must be a positive number of pixels (e.g. 64)")
    if min_length <= 0:
        raise UserError(f"image_min_length {min_length} must be a positive number of pixels (e.g. 512)")
    if max_ratio < 1:
        raise UserError(f"image_max_ratio {max_ratio} must be at least 1 (e.g. 2)")


def _ratio_ok(width: int, height: int, max_ratio: float) -> bool:
    return 1 / max_ratio <= width / height <= max_ratio


def _by_ratio(frames: set[Frame]) -> list[Frame]:
    """Sort frames from tallest to widest; equal ratios put the larger frame first."""
    return sorted(frames, key=lambda f: (f[0] / f[1], -f[0] * f[1], f[0]))


def max_frames(size_hw: tuple[int, int], step: int, min_length: int, max_ratio: float) -> list[Frame]:
    """The main buckets: for each width on the grid, the tallest frame within the pixel budget.

    Every frame holds at most as many pixels as the image size and no side longer than its
    longer side; the square of the shorter side is always present.
    """
    _check_grid(step, min_length, max_ratio)
    longest, budget = max(size_hw), size_hw[0] * size_hw[1]
    frames = {(min(size_hw), min(size_hw))}
    for width in range(min_length, longest + 1, step):
        fitting = budget // width
        height = min(longest, fitting - fitting % step)
        if height > 0 and _ratio_ok(width, height, max_ratio):
            frames |= {(width, height), (height, width)}
    return _by_ratio(frames)


def sub_frames(size_hw: tuple[int, int], step: int, min_length: int, max_ratio: float) -> list[Frame]:
    """The smaller buckets used for extra downscaled copies (`sub_image_num`).

    Every grid frame within the pixel budget and ratio limit that is not already a max frame.
    """
    main = set(max_frames(size_hw, step, min_length, max_ratio))
    longest, budget = max(size_hw), size_hw[0] * size_hw[1]
    grid = range(min_length, longest + 1, step)
    frames = {
        (width, height)
        for width in grid
        for height in grid
        if width * height <= budget and _ratio_ok(width, height, max_ratio)
    }
    return _by_ratio(frames - main)


def _nearest(img_w: int, img_h: int, frames: Sequence[Frame]) -> list[Frame]:
    """Frames ordered by aspect-ratio distance to the image, nearest first.

    Distance is measured in log ratio so that 1:2 and 2:1 are equally far from square; it is
    rounded so float noise cannot break a tie, and ties go to the larger frame (keeps more detail),
    then the narrower one, so the order never depends on input order.
    """
    image_log_ratio = math.log(img_w / img_h)

    def key(frame: Frame) -> tuple[float, int, int]:
        distance = abs(math.log(frame[0] / frame[1]) - image_log_ratio)
        return (round(distance, 9), -frame[0] * frame[1], frame[0])

    return sorted(frames, key=key)


def assign_frames(
    img_w: int, img_h: int, frames: Sequence[Frame], sub_frames: Sequence[Frame], sub_image_num: int
) -> list[Frame]:
    """The frames one image is resized into: its main frame, then up to `sub_image_num` sub frames.

    When fewer sub frames exist than asked for, the image gets all of them (the original crashed).
    """
    return _nearest(img_w, img_h, frames)[:1] + _nearest(img_w, img_h, sub_frames)[: max(sub_image_num, 0)]


def covers(image_size: tuple[int, int], frame: Frame) -> bool:
    """Whether the image fills the frame without being enlarged (image_disable_upscale)."""
    return image_size[0] >= frame[0] and image_size[1] >= frame[1]


@dataclass(frozen=True)
class BucketAssignment:
    """Where every image goes; counts include mirrored copies and repeats.

    An image with an empty frame list is not trained on (smaller than all its frames while
    image_disable_upscale is on).
    """

    frames_by_image: dict[str, list[Frame]]
    samples_by_frame: dict[Frame, int]
    total_samples: int
    sizes_by_image: dict[str, tuple[int, int]]
    copies: int  # samples per image and frame: 2 with mirroring, times the repeats

    @property
    def used_images(self) -> list[str]:
        return [name for name, frames in self.frames_by_image.items() if frames]

    @property
    def unused_images(self) -> list[str]:
        return [name for name, frames in self.frames_by_image.items() if not frames]


@dataclass(frozen=True)
class BucketPlan:
    """The frames for one image-size setting, built once and applied to a whole image folder."""

    frames: list[Frame]
    sub_frames: list[Frame]

    @classmethod
    def build(cls, size_hw: tuple[int, int], step: int, min_length: int, max_ratio: float) -> BucketPlan:
        return cls(
            max_frames(size_hw, step, min_length, max_ratio),
            sub_frames(size_hw, step, min_length, max_ratio),
        )

    def plan(self, image_sizes: Mapping[str, tuple[int, int]], sub_image_num: int, mirroring: bool,
             repeats: int = 1, disable_upscale: bool = False) -> BucketAssignment:
        """Assign each image (name -> (width, height)) its frames and count the training samples.

        With `disable_upscale` an image keeps only the frames it covers, as the original does: it
        is not moved to another frame, so a small image may end up in no frame at all.
        """
        copies = (2 if mirroring else 1) * repeats
        frames_by_image = {}
        for name, (w, h) in image_sizes.items():
            frames = assign_frames(w, h, self.frames, self.sub_frames, sub_image_num)
            if disable_upscale:
                frames = [frame for frame in frames if covers((w, h), frame)]
            frames_by_image[name] = frames
        counts = Counter(frame for frames in frames_by_image.values() for frame in frames)
        samples_by_frame = {
            frame: counts[frame] * copies for frame in self.frames + self.sub_frames if counts[frame]
        }
        return BucketAssignment(
            frames_by_image, samples_by_frame, sum(samples_by_frame.values()), dict(image_sizes), copies
        )
