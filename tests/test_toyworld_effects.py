"""Modes' effects on the toy-world model, judged in pictures on held-out seeds (see benchmarks/effects.py).

Margins are below what was measured (iLECO red -> blue: 39 % of red prompts drawn blue, 0 % change
on other colours; erase: 67 % of red prompts no longer red), so they hold on any seed, and far
above what an adapter without effect gives (0 %).
"""

import pytest

from traintrain.toyworld import effects
from traintrain.toyworld.release import load_toy_model
from traintrain.toyworld.scenes import Colour

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy():
    return load_toy_model()


def test_ileco_red_to_blue_draws_blue_for_red_and_leaves_other_colours(toy, tmp_path):
    numbers = effects.ileco(tmp_path, toy).numbers
    assert numbers["before"] == 0.0
    assert numbers["moved"] >= 0.25, numbers
    assert numbers["elsewhere_changed"] <= 0.1, numbers


def test_ileco_with_an_empty_target_erases_red(toy, tmp_path):
    numbers = effects.ileco(tmp_path, toy, original=Colour.RED, target=None).numbers
    assert numbers["moved"] >= 0.4, numbers
    assert numbers["elsewhere_changed"] <= 0.1, numbers
