"""The demo trains all three modes on the toy world and shows them in one judged picture."""

import pytest
from PIL import Image

from traintrain import demo
from traintrain.cli import main
from traintrain.demo import CELL, run_demo
from traintrain.networks.kohya_format import load_lora
from traintrain.toyworld.effects import SHOWN, SLIDER_MULTIPLIERS


@pytest.mark.slow
def test_demo_trains_three_modes_and_draws_them_in_one_picture(tmp_path, monkeypatch):
    # The numbers are checked for their presence, not their values: the LoRA and slider rows are judged on
    # just the SHOWN seeds the picture holds (the demo's own 24 and 12 made most of this test's time).
    monkeypatch.setattr(demo, "LORA_SEEDS", SHOWN)
    monkeypatch.setattr(demo, "SLIDER_SEEDS", SHOWN)
    result = run_demo(tmp_path / "demo", steps=30)
    assert set(result.lora_paths) == {"LoRA", "iLECO", "Difference"}
    for mode, path in result.lora_paths.items():
        assert load_lora(path)[1]["traintrain_mode"] == mode
    assert set(result.numbers["LoRA"]) >= {"trigger", "before", "elsewhere_changed"}
    assert set(result.numbers["iLECO"]) >= {"moved", "before", "elsewhere_changed"}
    assert set(result.numbers["Difference"]) >= {"monotonic", "colour_kept", "position_kept"}
    picture = Image.open(result.image_path)
    columns = 2 + 2 + len(SLIDER_MULTIPLIERS)
    assert picture.width >= columns * CELL and picture.height >= 2 * SHOWN * CELL
    # the LoRA section's before and after columns differ: the trained file changed the drawings
    before = picture.crop((0, 36, CELL, 36 + CELL)).tobytes()
    after = picture.crop((CELL, 36, 2 * CELL, 36 + CELL)).tobytes()
    assert before != after


def test_demo_steps_must_be_positive(capsys):
    assert main(["demo", "--steps", "0"]) == 2
    assert "steps" in capsys.readouterr().err
