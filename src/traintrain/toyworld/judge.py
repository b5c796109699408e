"""Reading a toy-world picture back into its scene attributes, by plain pixel analysis.

With it a model's prompt-following becomes a number: draw from a caption, judge the picture,
compare with the scene that was asked for. No learned model is involved, so the judge cannot
share a model's mistakes. It is built to survive what a tiny diffusion model draws: a 3x3 median
filter and a morphological opening remove speckle, the shape is cut at half its own contrast (so
a blurred edge keeps its geometric place), and colours are named by hue, which mixing with a
grey-level background leaves alone.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from traintrain.toyworld.scenes import COLOUR_RGB, POSITION_X, SIZE_FRACTION, Colour, Position, Scene, Shape, Size

ATTRIBUTES = ("colour", "shape", "size", "position")

Picture = Image.Image | np.ndarray

MIN_CONTRAST = 60.0  # RGB distance from the background below which nothing counts as drawn
MIN_AREA = 0.005  # fraction of the picture: smaller masks are specks, not shapes
MIN_SATURATION = 0.3  # below this the shape is grey-level and has no colour name
# A triangle (point up) has 1/7 as many pixels in the top quarter of its box as in the bottom
# quarter, a circle or a square as many. This tells it apart better than its box fill ratio
# (0.5), which a blurred small triangle, its tip lost, pushes towards a circle's (pi/4 = 0.785);
# the taper of such a cut triangle stays near 0.4 (0.6 for a small one at 32 px). Fill then tells
# a circle from a square (1).
TRIANGLE_BELOW_TAPER = 0.75
CIRCLE_BELOW_FILL = 0.89
# Midway between the scenes' classes (geometric mean for sizes), so the jitter stays far from them.
SIZE_BOUNDARY = float(np.sqrt(SIZE_FRACTION[Size.SMALL] * SIZE_FRACTION[Size.LARGE]))
LEFT_BELOW_X = (POSITION_X[Position.LEFT] + POSITION_X[Position.CENTER]) / 2
RIGHT_ABOVE_X = (POSITION_X[Position.CENTER] + POSITION_X[Position.RIGHT]) / 2


@dataclass(frozen=True)
class Verdict:
    """What the judge sees; the class fields are None when no shape was found.

    `area` is the shape's fraction of the picture, `fill` its fraction of its bounding box,
    `extent` the box's side (geometric mean of width and height) as a fraction of the picture,
    `centre` its centroid (x, y) in fractions, `taper` its pixels in the box's top quarter over those
    in the bottom quarter,
    `contrast` the RGB distance of its colour from the
    background: the measured values behind the class names, to see how sure a verdict is.
    """

    colour: Colour | None
    shape: Shape | None
    size: Size | None
    position: Position | None
    rgb: tuple[int, int, int] | None
    background_rgb: tuple[int, int, int]
    area: float = 0.0
    fill: float = 0.0
    extent: float = 0.0
    centre: tuple[float, float] | None = None
    taper: float = 0.0
    contrast: float = 0.0

    @property
    def found(self) -> bool:
        return self.shape is not None


def judge(picture: Picture) -> Verdict:
    """The shape, colour, size and position in one picture (PIL image or H x W x 3 uint8 array)."""
    smoothed = np.asarray(_as_image(picture).filter(ImageFilter.MedianFilter(3)), dtype=np.float64)
    background = np.median(_border(smoothed), axis=0)
    mask = _shape_mask(smoothed, background)
    background_rgb = _rgb(background)
    height, width = mask.shape
    core = _erode(mask)
    shape_rgb = np.median(smoothed[core if core.any() else mask], axis=0) if mask.any() else background
    contrast = float(np.linalg.norm(shape_rgb - background))
    if mask.sum() < MIN_AREA * mask.size or contrast < MIN_CONTRAST:
        return Verdict(None, None, None, None, None, background_rgb)
    rows, columns = np.nonzero(mask)
    box_width, box_height = columns.max() - columns.min() + 1, rows.max() - rows.min() + 1
    area = float(mask.mean())
    fill = float(mask.sum() / (box_width * box_height))
    extent = float(np.sqrt(box_width * box_height / (width * height)))
    centre = (float((columns.mean() + 0.5) / width), float((rows.mean() + 0.5) / height))
    height_in_box = (rows - rows.min() + 0.5) / box_height
    taper = float(np.sum(height_in_box < 0.25) / max(1, np.sum(height_in_box > 0.75)))
    return Verdict(
        colour=colour_name(shape_rgb),
        shape=_shape_from(fill, taper),
        size=Size.LARGE if extent > SIZE_BOUNDARY else Size.SMALL,
        position=_position_from_x(centre[0]),
        rgb=_rgb(shape_rgb),
        background_rgb=background_rgb,
        area=area,
        fill=fill,
        extent=extent,
        centre=centre,
        taper=taper,
        contrast=contrast,
    )


def _shape_mask(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Pixels further from the background than half the shape's contrast, specks removed."""
    distance = np.linalg.norm(pixels - background, axis=2)
    threshold = max(MIN_CONTRAST, 0.5 * float(np.percentile(distance, 99)))
    return _open(distance > threshold)


def colour_name(rgb: Sequence[float] | np.ndarray) -> Colour | None:
    """The named colour nearest in hue; None for grey-levels (white, grey, black have no hue)."""
    hue, saturation, _ = colorsys.rgb_to_hsv(*(float(channel) / 255 for channel in rgb))
    if saturation < MIN_SATURATION:
        return None
    return min(Colour, key=lambda colour: _hue_distance(hue, _HUES[colour]))


def accuracy(pictures: Sequence[Picture], scenes: Sequence[Scene]) -> dict[str, float]:
    """Per attribute, the fraction of pictures whose verdict matches the scene asked for.

    Also "found" (a shape was seen at all) and "all" (every attribute right). A picture with no
    shape counts as wrong for every attribute.
    """
    if len(pictures) != len(scenes) or not scenes:
        raise ValueError(f"need as many pictures as scenes, at least one: {len(pictures)} and {len(scenes)}")
    verdicts = [judge(picture) for picture in pictures]
    pairs = list(zip(verdicts, scenes, strict=True))
    hits = {name: [getattr(verdict, name) == getattr(scene, name) for verdict, scene in pairs] for name in ATTRIBUTES}
    hits["found"] = [verdict.found for verdict in verdicts]
    hits["all"] = [all(row) for row in zip(*(hits[name] for name in ATTRIBUTES), strict=True)]
    return {name: float(np.mean(values)) for name, values in hits.items()}


_HUES = {colour: colorsys.rgb_to_hsv(*(channel / 255 for channel in rgb))[0] for colour, rgb in COLOUR_RGB.items()}


def _hue_distance(a: float, b: float) -> float:
    """Distance on the hue circle (hues in 0..1)."""
    return min(abs(a - b), 1 - abs(a - b))


def _shape_from(fill: float, taper: float) -> Shape:
    if taper < TRIANGLE_BELOW_TAPER:
        return Shape.TRIANGLE
    return Shape.CIRCLE if fill < CIRCLE_BELOW_FILL else Shape.SQUARE


def _position_from_x(x: float) -> Position:
    if x < LEFT_BELOW_X:
        return Position.LEFT
    return Position.RIGHT if x > RIGHT_ABOVE_X else Position.CENTER


def _as_image(picture: Picture) -> Image.Image:
    if isinstance(picture, Image.Image):
        return picture.convert("RGB")
    array = np.asarray(picture)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 array, got shape {array.shape} of {array.dtype}")
    return Image.fromarray(array)


def _border(pixels: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels, where the toy world never draws a shape."""
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def _erode(mask: np.ndarray) -> np.ndarray:
    return np.asarray(_mask_image(mask).filter(ImageFilter.MinFilter(3))) > 0


def _open(mask: np.ndarray) -> np.ndarray:
    """Erode then dilate (3x3): isolated specks vanish, solid shapes keep their outline."""
    return np.asarray(_mask_image(mask).filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))) > 0


def _mask_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(mask.astype(np.uint8) * 255)


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    red, green, blue = (int(round(float(value))) for value in values)
    return red, green, blue
