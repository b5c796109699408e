"""The toy world: what a scene can hold, how it is drawn, how it is captioned.

A model trained on these pictures can be checked by plain pixel analysis (`toyworld.judge`), so
every attribute is chosen to be told apart there: three shapes with different box fill ratios,
saturated colours with distinct hues, two sizes far apart, three positions, light grey-level
backgrounds that no shape colour comes near. Shapes are drawn without anti-aliasing, so a clean
picture is exact. Magenta is drawn but never sampled by default: it is the colour the world has
not seen, for teaching a new concept.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from traintrain.fileio import atomic_path, write_text_atomic


class Shape(str, enum.Enum):
    CIRCLE = "circle"
    SQUARE = "square"
    TRIANGLE = "triangle"


class Colour(str, enum.Enum):
    RED = "red"
    YELLOW = "yellow"
    GREEN = "green"
    CYAN = "cyan"
    BLUE = "blue"
    MAGENTA = "magenta"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOUR_RGB[self]


class Size(str, enum.Enum):
    SMALL = "small"
    LARGE = "large"


class Position(str, enum.Enum):
    LEFT = "left"
    CENTER = "center"
    RIGHT = "right"


class Background(str, enum.Enum):
    WHITE = "white"
    GREY = "grey"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return BACKGROUND_RGB[self]


# Hues about 50 degrees apart or more (red 0, yellow 48, green 129, cyan 186, blue 229, magenta 303).
COLOUR_RGB = {
    Colour.RED: (220, 40, 40),
    Colour.YELLOW: (240, 200, 30),
    Colour.GREEN: (40, 170, 60),
    Colour.CYAN: (30, 190, 210),
    Colour.BLUE: (40, 70, 220),
    Colour.MAGENTA: (210, 40, 200),
}
BACKGROUND_RGB = {Background.WHITE: (255, 255, 255), Background.GREY: (225, 225, 225)}

HELD_OUT_COLOUR = Colour.MAGENTA
WORLD_COLOURS = tuple(colour for colour in Colour if colour is not HELD_OUT_COLOUR)

# Fractions of the picture side: the shape's box side, and its centre's x (y is 0.5).
SIZE_FRACTION = {Size.SMALL: 0.22, Size.LARGE: 0.38}
POSITION_X = {Position.LEFT: 0.28, Position.CENTER: 0.5, Position.RIGHT: 0.72}
POSITION_PHRASE = {Position.LEFT: "on the left", Position.CENTER: "in the center", Position.RIGHT: "on the right"}

# Sampled jitter keeps every class far from the judge's boundaries (see judge.py).
MAX_SHIFT_X, MAX_SHIFT_Y, MAX_SCALE_CHANGE = 0.02, 0.06, 0.06


@dataclass(frozen=True)
class Scene:
    """One picture's content; `shift_*` (fractions of the side) and `scale` vary it a little."""

    shape: Shape
    colour: Colour
    size: Size
    position: Position
    background: Background = Background.WHITE
    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 1.0


def caption(scene: Scene, *, size: bool = True) -> str:
    """The prompt that names what is drawn, e.g. "a small red circle on the left" (without `size`:
    "a red circle on the left", for a slider that sets the size)."""
    size_word = f"{scene.size.value} " if size else ""
    return f"a {size_word}{scene.colour.value} {scene.shape.value} {POSITION_PHRASE[scene.position]}"


def draw(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as a `size` x `size` RGB picture, hard-edged (no anti-aliasing)."""
    image = Image.new("RGB", (size, size), scene.background.rgb)
    side = SIZE_FRACTION[scene.size] * scene.scale * size
    centre_x = (POSITION_X[scene.position] + scene.shift_x) * size
    centre_y = (0.5 + scene.shift_y) * size
    left, top = centre_x - side / 2, centre_y - side / 2
    right, bottom = left + side, top + side
    pen = ImageDraw.Draw(image)
    fill = scene.colour.rgb
    if scene.shape is Shape.CIRCLE:
        pen.ellipse((left, top, right, bottom), fill=fill)
    elif scene.shape is Shape.SQUARE:
        pen.rectangle((left, top, right, bottom), fill=fill)
    else:
        pen.polygon([(centre_x, top), (right, bottom), (left, bottom)], fill=fill)
    return image


def sample_scenes(
    n: int,
    seed: int,
    *,
    shapes: Sequence[Shape] = tuple(Shape),
    colours: Sequence[Colour] = WORLD_COLOURS,
    sizes: Sequence[Size] = tuple(Size),
    positions: Sequence[Position] = tuple(Position),
    backgrounds: Sequence[Background] = tuple(Background),
    jitter: bool = True,
) -> list[Scene]:
    """`n` random scenes drawn from the given choices, the same list for the same seed.

    Without `jitter` every shape sits exactly on its class's place and size; the classes drawn
    for a seed stay the same either way.
    """
    rng = np.random.default_rng(seed)

    def pick(options: Sequence):
        return options[int(rng.integers(len(options)))]

    scenes = []
    for _ in range(n):
        attributes = (pick(shapes), pick(colours), pick(sizes), pick(positions), pick(backgrounds))
        shift_x, shift_y, scale_change = rng.uniform(-1, 1, 3) * (MAX_SHIFT_X, MAX_SHIFT_Y, MAX_SCALE_CHANGE)
        if not jitter:
            shift_x = shift_y = scale_change = 0.0
        scenes.append(Scene(*attributes, round(shift_x, 4), round(shift_y, 4), round(1 + scale_change, 4)))
    return scenes


def write_dataset(
    folder: Path, scenes: Sequence[Scene], size: int = 64, captions: Sequence[str] | None = None
) -> list[Path]:
    """`NNNN.png` with its caption in `NNNN.txt` beside it, the layout LoRA mode reads.

    `captions` replaces the scenes' own captions (e.g. a trigger word in place of a colour's name).
    The same scenes give byte-identical files.
    """
    folder = Path(folder)
    texts = [caption(scene) for scene in scenes] if captions is None else list(captions)
    if len(texts) != len(scenes):
        raise ValueError(f"{len(scenes)} scenes but {len(texts)} captions")
    paths = []
    for index, (scene, text) in enumerate(zip(scenes, texts, strict=True)):
        path = folder / f"{index:04d}.png"
        with atomic_path(path) as tmp:
            draw(scene, size).save(tmp, format="PNG")
        write_text_atomic(path.with_suffix(".txt"), text)
        paths.append(path)
    return paths
