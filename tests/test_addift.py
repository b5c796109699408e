"""ADDifT and Multi-ADDifT: pairs, captions, difference masks, timestep sweep, saved files."""

import pytest
import torch
from PIL import Image, ImageDraw

from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.jobs.runner import run_job
from traintrain.models.tiny import write_tiny_model
from traintrain.modes.addift import sweep_range
from traintrain.modes.pairs import find_pairs
from traintrain.networks.kohya_format import load_lora


def picture(path, eyes_closed: bool, size=64):
    """A face whose only difference between the pair is the eyes (top-left quarter untouched)."""
    image = Image.new("RGB", (size, size), (230, 220, 200))
    draw = ImageDraw.Draw(image)
    if eyes_closed:
        draw.rectangle((34, 40, 58, 44), fill=(20, 20, 20))
    else:
        draw.ellipse((34, 34, 58, 50), fill=(20, 20, 120))
    image.save(path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_model("sd1", "single-file", tmp_path_factory.mktemp("addift") / "tiny.safetensors")


def config_for(model, **values):
    base = dict(
        model=str(model), network_rank=4, network_alpha=4, train_iterations=6, train_learning_rate=1e-3,
        train_batch_size=1, image_size=[64, 64], image_buckets_step=64, image_min_length=64,
        train_model_precision="fp32", save_precision="fp32", train_seed=1, save_lora_name="addift",
        train_min_timesteps=200, train_max_timesteps=800,
    )
    base.update(values)
    return TrainConfig(**base)


def test_sweep_covers_tenths_and_pairs_share_a_range():
    ranges = [sweep_range(step, 200, 800) for step in range(1, 21)]
    assert ranges[0] == ranges[1] == (200, 260) and ranges[2] == (260, 320)
    assert ranges[18] == (740, 800) and ranges[20 - 1] == ranges[18]
    assert sweep_range(1, 990, 1000) == (990, 991)


def test_addift_runs_saves_and_masks_only_the_changed_region(model, tmp_path):
    original, target = picture(tmp_path / "open.png", False), picture(tmp_path / "closed.png", True)
    config = config_for(model, mode="ADDifT", original_image=str(original), target_image=str(target), diff_use_diff_mask=True)
    result = run_job(config, output_dir=tmp_path / "out")
    assert result.path.is_file() and len(result.losses) == 6
    tensors, meta = load_lora(result.path)
    assert meta["traintrain_mode"] == "ADDifT" and not any(k.startswith("lora_te") for k in tensors)
    mask = result.outcome.extras["samples"][0].mask
    assert mask.shape == (1, 8, 8)
    assert mask[0, :4, :4].max() == 0  # top-left: identical in both images
    assert mask[0, 4:6, 4:7].min() == 1  # the eyes

    unmasked = run_job(config.with_values(diff_use_diff_mask=False, save_lora_name="plain"), output_dir=tmp_path / "out")
    assert result.losses[0] != unmasked.losses[0]  # the mask reaches the loss
    assert unmasked.outcome.extras["samples"][0].mask is None


def test_multi_addift_pairs_with_captions(model, tmp_path):
    data = tmp_path / "pairs"
    (data / "sub").mkdir(parents=True)
    picture(data / "a.png", False)
    picture(data / "a_target.png", True)
    (data / "a.txt").write_text("eyes open", encoding="utf-8")
    picture(data / "sub" / "b.PNG", False)
    picture(data / "sub" / "b_target.webp", True)
    picture(data / "lonely.png", False)  # no partner: not a pair
    assert [(o.name, t.name) for o, t in find_pairs(data, "_target")] == [("a.png", "a_target.png"), ("b.PNG", "b_target.webp")]
    config = config_for(model, mode="Multi-ADDifT", lora_data_directory=str(data), lora_trigger_word="tt", image_mirroring=True)
    result = run_job(config, output_dir=tmp_path / "out")
    captions = [s.caption for s in result.outcome.extras["samples"]]
    assert captions == ["tt, eyes open", "tt, eyes open", "tt", "tt"]
    assert result.path.is_file()


def test_multi_addift_without_pairs_is_an_error(model, tmp_path):
    picture(tmp_path / "x.png", False)
    with pytest.raises(UserError, match="no image pairs"):
        run_job(config_for(model, mode="Multi-ADDifT", lora_data_directory=str(tmp_path)), output_dir=tmp_path / "out")


def test_revert_swaps_original_and_target(model, tmp_path):
    original, target = picture(tmp_path / "open.png", False), picture(tmp_path / "closed.png", True)
    config = config_for(model, mode="ADDifT", original_image=str(original), target_image=str(target), train_iterations=1)
    forward = run_job(config, output_dir=tmp_path / "a").outcome.extras["samples"][0]
    backward = run_job(config.with_values(diff_revert_original_target=True), output_dir=tmp_path / "b").outcome.extras["samples"][0]
    assert torch.allclose(forward.original, backward.target, atol=1e-2) and torch.allclose(forward.target, backward.original, atol=1e-2)
