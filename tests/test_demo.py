import pytest
from PIL import Image

from traintrain.demo import CELL, SHAPES, run_demo


@pytest.mark.slow
def test_demo_writes_lora_and_before_after_picture(tmp_path):
    result = run_demo(tmp_path / "demo", steps=40)
    assert result.lora_path.is_file() and len(result.losses) == 40
    picture = Image.open(result.image_path)
    assert picture.size == (4 * CELL, 18 + CELL * len(SHAPES))
    # before and after columns must differ: the LoRA was loaded by diffusers and changed the output
    before = picture.crop((2 * CELL, 18, 3 * CELL, 18 + CELL)).tobytes()
    after = picture.crop((3 * CELL, 18, 4 * CELL, 18 + CELL)).tobytes()
    assert before != after
