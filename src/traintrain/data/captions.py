"""Captions beside the images, the trigger word in front of them, and the tag counts saved as metadata."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from traintrain.errors import UserError

CAPTION_SUFFIXES = (".txt", ".caption")
"""Looked up in this order: a `.txt` file wins over a `.caption` file of the same name."""


def read_caption(image_path: str | os.PathLike[str]) -> str | None:
    """The caption file's text for an image, stripped; None when the image has no caption file."""
    for suffix in CAPTION_SUFFIXES:
        caption_path = Path(image_path).with_suffix(suffix)
        if caption_path.is_file():
            return _read_utf8(caption_path)
    return None


def _read_utf8(path: Path) -> str:
    """Decode as UTF-8, dropping the byte-order mark that Windows editors often write."""
    try:
        return path.read_bytes().decode("utf-8-sig").strip()
    except UnicodeDecodeError as error:
        raise UserError(
            f"caption file {path} is not UTF-8 text (byte {error.start}): save it again as UTF-8"
        ) from error


# A copy counter at the end of a name: "_001", " 2", "-3", "(1)", " (12)", also several ("_01 (2)").
_TRAILING_COUNTER = re.compile(r"(?:[\s_-]+\d+|\s*\(\d+\))+$")


def filename_tags(image_path: str | os.PathLike[str]) -> str:
    """The tags an image's file name stands for, for `image_use_filename_as_tag`.

    "red_hair_smile_001.png" -> "red, hair, smile": underscores and commas separate tags (as
    in the original), a copy counter at the end and the original's "_id_..." suffix are dropped,
    spaces inside a tag are kept ("red hair,smile (2).png" -> "red hair, smile").
    """
    stem = Path(image_path).stem.split("_id_")[0]
    stem = _TRAILING_COUNTER.sub("", stem)
    tags = [tag.strip() for tag in re.split(r"[_,]", stem)]
    return ", ".join(tag for tag in tags if tag)


def image_caption(image_path: str | os.PathLike[str], trigger: str | None, use_filename: bool = False) -> str:
    """The training prompt of one image: the trigger word, then its caption file's text or, with
    `use_filename`, its file name's tags instead (the original ignores the caption file then)."""
    return compose_caption(trigger, filename_tags(image_path) if use_filename else read_caption(image_path))


def compose_caption(trigger: str | None, caption: str | None) -> str:
    """The training prompt: "{trigger}, {caption}", or whichever of the two is present, or ""."""
    parts = [text.strip() for text in (trigger, caption) if text and text.strip()]
    return ", ".join(parts)


def tag_frequency(captions: Iterable[str]) -> dict[str, int]:
    """How often each comma-separated tag occurs, counted as kohya's `ss_tag_frequency` does.

    Tags are stripped and lower-cased and empty ones skipped, so files saved here read the same
    in tools that show kohya's tag statistics.
    """
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(tag.strip().lower() for tag in caption.split(",") if tag.strip())
    return dict(counts)
