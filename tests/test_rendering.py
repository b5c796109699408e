"""The preview grid: column titles, and a title on each row so that its prompt can be read."""

import numpy as np
from PIL import Image

from traintrain.rendering import CHAR_WIDTH, ROW_TITLE_MIN_WIDTH, fitted_lines, labelled_grid


def cells(colour, rows=2, side=64):
    return [Image.new("RGB", (side, side), colour) for _ in range(rows)]


def test_rows_are_titled_with_their_prompts_left_of_the_pictures():
    columns = [cells("red"), cells("blue"), cells("green")]
    grid = labelled_grid(columns, ["x-1", "x+0", "x+1"], row_titles=["a red apple", ""])
    pixels = np.asarray(grid)
    left, header = ROW_TITLE_MIN_WIDTH, 18
    assert grid.size == (left + 3 * 64, header + 2 * 64)
    assert tuple(pixels[header + 5, left + 5]) == (255, 0, 0)  # first column starts right of the strip
    assert tuple(pixels[header + 64 + 5, left + 2 * 64 + 5]) == (0, 128, 0)
    strips = [pixels[header + row * 64: header + (row + 1) * 64, :left] for row in (0, 1)]
    assert all((strip < 128).any() for strip in strips)  # text in both, "(empty prompt)" in the second
    assert not np.array_equal(strips[0], strips[1])


def test_without_row_titles_the_grid_has_no_strip():
    grid = labelled_grid([cells("red")], ["x+0"])
    assert grid.size == (64, 18 + 2 * 64)


def test_long_prompts_are_wrapped_and_cut_to_the_cell():
    text = "a photo of a red apple on a wooden table in soft morning light, highly detailed, 8k"
    lines = fitted_lines(text, 120, 40)
    assert len(lines) == 40 // 12 and lines[-1].endswith("...")
    assert all(len(line) <= 120 // CHAR_WIDTH for line in lines)
    assert fitted_lines("red", 120, 40) == ["red"]
