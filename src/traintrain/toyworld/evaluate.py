"""How well a model follows toy-world prompts: draw each caption on held-out seeds, judge, count.

The toy model's own prompt-following is the base of every effect measured on it: a mode's effect
is the change of these numbers (or of the judge's verdicts) that the trained adapter makes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from traintrain.toyworld.judge import Verdict, accuracy, judge
from traintrain.toyworld.sampling import draw_prompts
from traintrain.toyworld.scenes import WORLD_COLOURS, Position, Scene, Shape, Size, caption

HELD_OUT_SEEDS = range(50_000, 50_000 + 1000)  # start noises no test or benchmark trains on


def world_prompts(colours: Sequence = WORLD_COLOURS) -> list[Scene]:
    """One scene per caption the world has (shape x colour x size x position), unjittered."""
    return [Scene(shape, colour, size, position) for shape, colour, size, position in
            itertools.product(Shape, colours, Size, Position)]


def draw_and_judge(components, prompts: Sequence[str], seeds: Sequence[int]) -> list[Verdict]:
    return [judge(picture) for picture in draw_prompts(components, prompts, seeds)]


def prompt_following(components, scenes: Sequence[Scene] | None = None, seeds_per_prompt: int = 1,
                     first_seed: int = HELD_OUT_SEEDS[0]) -> dict[str, float]:
    """Per attribute, the fraction of pictures the judge reads as their caption asked."""
    scenes = list(scenes or world_prompts())
    asked = [scene for scene in scenes for _ in range(seeds_per_prompt)]
    seeds = [first_seed + index for index in range(len(asked))]
    pictures = draw_prompts(components, [caption(scene) for scene in asked], seeds)
    return accuracy(pictures, asked)

