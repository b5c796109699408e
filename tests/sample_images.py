"""Eight small captioned pictures (four shapes, two variants each) for the tests that train a LoRA
on a folder: `write_demo_images(folder)` writes `NN_V.png` with `NN_V.txt` captions."""

from pathlib import Path

from PIL import Image, ImageDraw

from traintrain.fileio import atomic_path, write_text_atomic

TRIGGER = "ttdemo"
SHAPES = [
    ("red circle", (220, 40, 40), "ellipse", (250, 240, 200)),
    ("blue square", (40, 70, 220), "rectangle", (240, 240, 240)),
    ("green triangle", (40, 170, 60), "triangle", (30, 30, 40)),
    ("yellow circle", (240, 210, 40), "ellipse", (60, 40, 120)),
]
SIZE = 64


def draw_shape(color, kind: str, background, size: int = SIZE, offset: int = 0) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    margin = size // 5 + offset
    box = (margin, margin, size - margin + offset // 2, size - margin)
    if kind == "ellipse":
        draw.ellipse(box, fill=color)
    elif kind == "rectangle":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([(size // 2, margin), (margin, size - margin), (size - margin, size - margin)], fill=color)
    return image


def write_demo_images(folder: Path) -> list[tuple[Path, str]]:
    """Two slightly different images per shape, each with a caption file; returns (path, caption
    with the trigger word) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (name, color, kind, background) in enumerate(SHAPES):
        for variant in range(2):
            path = folder / f"{index:02d}_{variant}.png"
            with atomic_path(path) as tmp:
                draw_shape(color, kind, background, offset=variant * 6).save(tmp, format="PNG")
            caption = f"a {name}"
            write_text_atomic(path.with_suffix(".txt"), caption)
            written.append((path, f"{TRIGGER}, {caption}"))
    return written
