"""Modes' effects on the toy-world model, judged in pictures on held-out seeds (see benchmarks/effects.py).

Margins sit below what was measured on every training seed tried (7 and 8; README's table) and
far above what an adapter without effect gives (0 %, or for a slider the spread of one shape's
judged extent). The numbers are drawn on fewer held-out seeds than the benchmark, to stay short.
"""

import pytest

from traintrain.toyworld import effects
from traintrain.toyworld.evaluate import world_prompts
from traintrain.toyworld.release import load_toy_model

pytestmark = pytest.mark.slow

# Measured (training seeds 7-11 for iLECO): LoRA trigger 98 %, 100 % with 8 %, 5 % elsewhere;
# iLECO 83 %, 86 %, 89 %, 83 %, 83 % with 3 %, 1 %, 3 %, 6 %, 3 % elsewhere; erase 47 % and more; sliders monotonic on
# 83-90 % of seeds, extent -1 -> +1 grows by 0.03-0.09 of the side, colour kept 93-97 %; copier 43-67 %.
LORA_TRIGGER, LORA_ELSEWHERE = 0.8, 0.15
ILECO_MOVED, ILECO_ELSEWHERE, ERASE_MOVED, ERASE_ELSEWHERE = 0.6, 0.1, 0.3, 0.2
SLIDER_MONOTONIC, SLIDER_SPAN, SLIDER_COLOUR_KEPT, COPIER_REPRODUCES = 0.7, 0.015, 0.85, 0.25
# iLECO trains half the benchmark's 600 steps here (the same rate): measured with this file's settings
# (repeats=1), training seeds 7, 8, 9: red->blue 78 %, 72 %, 83 % moved, 0 %, 3 %, 0 % elsewhere; erase (seed 7)
# 56 %, 8 % (seed 8: 50 %, 3 %).
# Halving the other rows did not keep their margins (seed 7: LoRA at 300 steps 23 % elsewhere; ADDifT at 200
# a span of 0.021; the Difference copier at 200 35 %), so they keep the benchmark's steps.
ILECO_STEPS = 300


@pytest.fixture(scope="module")
def toy():
    return load_toy_model()


def test_lora_teaches_magenta_under_its_trigger_and_leaves_other_prompts(toy, tmp_path):
    numbers = effects.lora_concept(tmp_path, toy, seeds=30).numbers
    assert numbers["before"] == 0.0
    assert numbers["trigger"] >= LORA_TRIGGER, numbers
    assert numbers["elsewhere_changed"] <= LORA_ELSEWHERE, numbers


def test_ileco_red_to_blue_draws_blue_for_red_and_leaves_other_colours(toy, tmp_path):
    numbers = effects.ileco(tmp_path, toy, repeats=1, steps=ILECO_STEPS).numbers
    assert numbers["before"] == 0.0
    assert numbers["moved"] >= ILECO_MOVED, numbers
    assert numbers["elsewhere_changed"] <= ILECO_ELSEWHERE, numbers


def test_ileco_with_an_empty_target_erases_red(toy, tmp_path):
    numbers = effects.ileco(tmp_path, toy, target=None, repeats=1, steps=ILECO_STEPS).numbers
    assert numbers["moved"] >= ERASE_MOVED, numbers
    assert numbers["elsewhere_changed"] <= ERASE_ELSEWHERE, numbers


@pytest.mark.parametrize("mode", ["Difference", "ADDifT"])
def test_the_size_slider_grows_the_shape_with_its_multiplier_and_keeps_its_colour(toy, tmp_path, mode):
    numbers = effects.difference_slider(tmp_path, toy, mode=mode, seeds=20).numbers
    assert numbers["monotonic"] >= SLIDER_MONOTONIC, numbers
    assert numbers["extent_1"] - numbers["extent_-1"] >= SLIDER_SPAN, numbers
    assert numbers["colour_kept"] >= SLIDER_COLOUR_KEPT, numbers
    if mode == "Difference":  # the copier alone draws the Original; the bare model never does
        assert numbers["copier_reproduces"] >= COPIER_REPRODUCES and numbers["copier_before"] <= 0.1, numbers


def test_the_other_prompts_shown_are_one_of_each_colour_first():
    """The judged set stays the first prompts (which group by colour); the picture shows a spread."""
    world = world_prompts()
    shown = effects.one_per_colour(world[:24])
    assert [world[i].colour.value for i in shown] == ["red", "yellow", "green", "cyan"]
    assert effects.one_per_colour(world[:4]) == [0, 1, 2, 3]  # one colour only: the first ones
