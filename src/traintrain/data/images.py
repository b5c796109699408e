"""Finding training images, reading them into plain RGB plus an optional mask, and fitting frames.

Every colour mode Pillow opens is turned into 8-bit RGB here, so nothing downstream has to care
about grayscale, palettes, 16-bit or float files (the original crashed on several of them).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from traintrain.errors import UserError

# image_use_transparent_background_ajust composites onto white (the option's first name in the
# original was "white background adjust").
TRANSPARENT_BACKGROUND = (255, 255, 255)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff", ".bmp", ".webp", ".pcx", ".ico"})

# What Pillow raises for files it cannot decode: unknown format, truncation, corrupt data.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, Image.DecompressionBombError)


class BadImage(UserError):
    """One image file cannot be used; callers may report it and go on with the others."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot read image {path} ({reason}): replace or remove the file")
        self.path = path


@dataclass(frozen=True)
class LoadedImage:
    """An RGB image and, for images with transparency, how opaque each pixel is (0..1, H x W)."""

    image: Image.Image
    mask: np.ndarray | None

    def fit(self, width: int, height: int) -> LoadedImage:
        """Resize to cover the frame and centre-crop, the image and its mask alike."""
        mask = None if self.mask is None else resize_mask_cover_center_crop(self.mask, width, height)
        return LoadedImage(resize_cover_center_crop(self.image, width, height), mask)

    def mirrored(self) -> LoadedImage:
        """The horizontally flipped copy used by `image_mirroring`."""
        mask = None if self.mask is None else np.ascontiguousarray(self.mask[:, ::-1])
        return LoadedImage(ImageOps.mirror(self.image), mask)


def find_images(directory: str | os.PathLike[str], field: str = "lora_data_directory") -> list[Path]:
    """All images under `directory` (subfolders included, hidden files and folders skipped).

    Extensions match in any letter case; the result is sorted by relative path so that runs on
    any file system see the images in the same order. `field` is the setting that named the folder.
    """
    root = Path(directory)
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist", "choose a folder of images", field=field)
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [
            Path(folder, name)
            for name in files
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
        ]
    if not found:
        raise UserError(
            f"no images in {root}", f"add {', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))} files to it",
            field=field,
        )
    return sorted(found, key=lambda path: (path.relative_to(root).as_posix().casefold(), path.as_posix()))


def load_image(path: str | os.PathLike[str], background: tuple[int, int, int] | None = None) -> LoadedImage:
    """Read the first frame of an image, upright (EXIF orientation applied), as RGB plus mask.

    A transparent image's RGB is what its pixels hold under the alpha (often black or leftover
    colours); with `background` it is composited onto that colour instead, so the VAE sees a
    clean background. The alpha mask is kept either way.
    """
    path = Path(path)
    try:
        with Image.open(path) as opened:
            opened.seek(0)
            opened.load()
            upright = ImageOps.exif_transpose(opened)
            return _to_rgb_and_mask(upright, background)
    except UnidentifiedImageError as error:
        reason = "empty file" if path.stat().st_size == 0 else "not an image format Pillow can read"
        raise BadImage(path, reason) from error
    except _DECODE_ERRORS as error:
        raise BadImage(path, str(error) or type(error).__name__) from error


def _to_rgb_and_mask(image: Image.Image, background: tuple[int, int, int] | None = None) -> LoadedImage:
    if image.mode.startswith("I") or image.mode == "F":
        image = _scaled_to_8bit(image)
    if _has_transparency(image):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        mask = None if alpha.min() >= 1.0 else alpha
        if background is not None and mask is not None:
            backdrop = Image.new("RGBA", rgba.size, (*background, 255))
            return LoadedImage(Image.alpha_composite(backdrop, rgba).convert("RGB"), mask)
        return LoadedImage(rgba.convert("RGB"), mask)
    return LoadedImage(image.convert("RGB"), None)


def _has_transparency(image: Image.Image) -> bool:
    """Pillow 10.1's `has_transparency_data`, spelled out: the Web-UIs pin Pillow 9.5, which lacks it."""
    return image.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in image.info


def _scaled_to_8bit(image: Image.Image) -> Image.Image:
    """Map integer and float grayscale to 0..255; Pillow's own conversion just clips them.

    These modes carry no declared range: 16-bit modes are scaled from 0..65535, 32-bit integers
    likewise unless they already fit 0..255, and floats from 0..1 unless they exceed 1.
    """
    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max(initial=0.0))
    if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
        values = values / 257.0
    elif image.mode == "F" and peak <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _cover_box(size: tuple[int, int], width: int, height: int) -> tuple[float, float, float, float]:
    """The centred region of the source with the frame's aspect ratio, as large as fits."""
    source_w, source_h = size
    scale = max(width / source_w, height / source_h)
    box_w, box_h = width / scale, height / scale
    left, top = (source_w - box_w) / 2, (source_h - box_h) / 2
    return (left, top, left + box_w, top + box_h)


def crop_top_left(source_size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """Where the crop starts in the scaled image, in pixels (SDXL's crop_top, crop_left)."""
    source_w, source_h = source_size
    scale = max(width / source_w, height / source_h)
    left, top, _, _ = _cover_box(source_size, width, height)
    return (round(top * scale), round(left * scale))


def resize_cover_center_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height and crop the centre, in one Lanczos resample."""
    return image.resize((width, height), Image.Resampling.LANCZOS, box=_cover_box(image.size, width, height))


def resize_mask_cover_center_crop(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """The same fit for a mask; bilinear so values stay within 0..1 (Lanczos would ring)."""
    source = Image.fromarray(np.asarray(mask, dtype=np.float32))
    fitted = source.resize((width, height), Image.Resampling.BILINEAR, box=_cover_box(source.size, width, height))
    return np.asarray(fitted, dtype=np.float32)
