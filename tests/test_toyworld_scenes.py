"""The toy world's scenes: captions name what is drawn, sampling and datasets are reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from traintrain.data.captions import read_caption
from traintrain.data.images import find_images
from traintrain.toyworld.scenes import (
    HELD_OUT_COLOUR,
    WORLD_COLOURS,
    Background,
    Colour,
    Position,
    Scene,
    Shape,
    Size,
    caption,
    draw,
    sample_scenes,
    write_dataset,
)


def test_caption_reads_like_a_prompt():
    assert caption(Scene(Shape.CIRCLE, Colour.RED, Size.SMALL, Position.LEFT)) == "a small red circle on the left"
    assert caption(Scene(Shape.TRIANGLE, Colour.BLUE, Size.LARGE, Position.CENTER)) == (
        "a large blue triangle in the center"
    )


def test_every_caption_word_is_what_the_picture_shows():
    """Checked on the pixels directly, without the judge: colour, background, size and position."""
    for scene in sample_scenes(60, seed=3):
        text = caption(scene)
        for word in (scene.shape.value, scene.colour.value, scene.size.value, scene.position.value):
            assert word in text
        pixels = np.asarray(draw(scene, 64)).reshape(-1, 3)
        colours = {tuple(int(c) for c in rgb) for rgb in np.unique(pixels, axis=0)}
        assert colours == {scene.colour.rgb, scene.background.rgb}, "hard edges: two colours only"
        inside = np.all(np.asarray(draw(scene, 64)) == scene.colour.rgb, axis=2)
        rows, columns = np.nonzero(inside)
        x = columns.mean() / 64
        assert {Position.LEFT: x < 0.35, Position.CENTER: 0.45 < x < 0.55, Position.RIGHT: x > 0.65}[scene.position]
        box_side = np.sqrt((np.ptp(rows) + 1) * (np.ptp(columns) + 1)) / 64
        assert (box_side > 0.3) == (scene.size is Size.LARGE), (scene, box_side)


def test_shapes_fill_their_box_as_the_judge_expects():
    fills = {}
    for shape in Shape:
        inside = np.any(np.asarray(draw(Scene(shape, Colour.GREEN, Size.LARGE, Position.CENTER), 64)) != 255, axis=2)
        rows, columns = np.nonzero(inside)
        fills[shape] = inside.sum() / ((np.ptp(rows) + 1) * (np.ptp(columns) + 1))
    assert fills[Shape.TRIANGLE] < 0.65 < fills[Shape.CIRCLE] < 0.85 < fills[Shape.SQUARE]


def test_sampling_is_reproducible_and_keeps_the_held_out_colour_out():
    scenes = sample_scenes(200, seed=7)
    assert scenes == sample_scenes(200, seed=7)
    assert scenes != sample_scenes(200, seed=8)
    assert HELD_OUT_COLOUR not in {scene.colour for scene in scenes}
    assert {scene.colour for scene in scenes} == set(WORLD_COLOURS)
    for attribute, values in (("shape", Shape), ("size", Size), ("position", Position), ("background", Background)):
        assert {getattr(scene, attribute) for scene in scenes} == set(values)
    assert len({(scene.shift_x, scene.scale) for scene in scenes}) == 200, "jitter varies every scene"


def test_sampling_can_be_restricted():
    scenes = sample_scenes(30, seed=1, colours=[HELD_OUT_COLOUR], shapes=[Shape.SQUARE], jitter=False)
    assert {(scene.colour, scene.shape) for scene in scenes} == {(Colour.MAGENTA, Shape.SQUARE)}
    assert {(scene.shift_x, scene.shift_y, scene.scale) for scene in scenes} == {(0.0, 0.0, 1.0)}


def test_dataset_writes_caption_pairs_the_lora_mode_reads(tmp_path):
    scenes = sample_scenes(5, seed=2)
    paths = write_dataset(tmp_path / "data", scenes, size=48)
    assert [path.name for path in paths] == [f"{index:04d}.png" for index in range(5)]
    assert find_images(tmp_path / "data") == paths
    assert [read_caption(path) for path in paths] == [caption(scene) for scene in scenes]
    assert draw(scenes[0], 48).tobytes() == Image.open(paths[0]).convert("RGB").tobytes()


def test_dataset_is_byte_identical_for_the_same_seed(tmp_path):
    for name in ("first", "second"):
        write_dataset(tmp_path / name, sample_scenes(6, seed=11))
    first, second = sorted((tmp_path / "first").iterdir()), sorted((tmp_path / "second").iterdir())
    assert [path.name for path in first] == [path.name for path in second]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second, strict=True))


def test_dataset_takes_replacement_captions(tmp_path):
    scenes = sample_scenes(2, seed=0, colours=[HELD_OUT_COLOUR])
    captions = [caption(scene).replace("magenta", "ttconcept") for scene in scenes]
    paths = write_dataset(tmp_path, scenes, captions=captions)
    assert [read_caption(path) for path in paths] == captions
    with pytest.raises(ValueError, match="2 scenes but 1 captions"):
        write_dataset(tmp_path / "other", scenes, captions=captions[:1])
