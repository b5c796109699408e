"""Checks before the model loads: names of every file, disk space, model headers, images, folders."""

import shutil

import pytest
import torch
from PIL import Image

from job_helpers import tiny_job
from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.modes.registry import get_mode
from traintrain.jobs.runner import run_job
from traintrain.models.loading import read_weight_shapes
from traintrain.models.tiny import write_tiny_model
from traintrain.training.preflight import check_latent_cache_dir
from traintrain.training.saving import lora_size_bound


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a job gets as far as loading the model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("traintrain.models.loading.load_model", refuse)


def planned_files(config):
    return get_mode(config.mode).planned_files(config)


def test_planned_files_name_every_save():
    config = TrainConfig(save_lora_name="job", train_iterations=7, save_per_steps=3)
    assert planned_files(config) == ["job.safetensors", "job_3steps.safetensors", "job_6steps.safetensors"]
    previews = TrainConfig(save_lora_name="p", train_iterations=4, preview_prompts="a;b", preview_every_steps=2)
    assert planned_files(previews) == [
        "p.safetensors", "p_preview.png", "p_0steps_preview.png", "p_2steps_preview.png"
    ]
    ileco = TrainConfig(mode="iLECO", original_prompt="cat", save_lora_name="i")
    assert planned_files(ileco) == ["i.safetensors", "i_preview.png"]  # iLECO previews its prompts by default


def test_planned_files_of_difference_follow_the_second_pass():
    config = TrainConfig.from_json_dict({
        "mode": "Difference", "save_lora_name": "d", "train_iterations": 10, "save_per_steps": 0,
        "diff_save_1st_pass": True, "use_2nd_pass_settings": True, "2nd pass": {"train_iterations": 4, "save_per_steps": 2},
    })
    assert planned_files(config) == ["d.safetensors", "d_2steps.safetensors", "d_copy.safetensors"]
    only = TrainConfig(mode="Difference", save_lora_name="d", diff_1st_pass_only=True, diff_save_1st_pass=True,
                       save_per_steps=1)
    assert planned_files(only) == ["d.safetensors"]


def test_an_existing_periodic_file_stops_the_job_before_loading(tmp_path, no_model_load):
    out = tmp_path / "out"
    out.mkdir()
    (out / "job_2steps.safetensors").write_bytes(b"previous")
    with pytest.raises(UserError, match="job_2steps.safetensors already exists"):
        run_job(tiny_job(tmp_path, train_iterations=5, save_per_steps=2), output_dir=out)
    assert (out / "job_2steps.safetensors").read_bytes() == b"previous"


def test_a_small_disk_stops_the_job_before_loading(tmp_path, monkeypatch, no_model_load):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=200_000))
    with pytest.raises(UserError, match=r"not enough disk space .* saves 3 file\(s\) needing up to .* only 195.3 KiB"):
        run_job(tiny_job(tmp_path, train_iterations=3, save_per_steps=1), output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("network_type, rank, precision", [
    ("lierla", 16, "fp16"), ("c3lier", 8, "fp32"), ("loha", 4, "fp16"), ("lokr", 8, "fp32"),
])
def test_the_size_bound_is_above_the_real_file_and_close_to_it(tmp_path, network_type, rank, precision):
    config = tiny_job(tmp_path, network_type=network_type, network_rank=rank, save_precision=precision, train_iterations=1)
    real = run_job(config, output_dir=tmp_path / "out").path.stat().st_size
    shapes = read_weight_shapes(config.model)
    bound = lora_size_bound(shapes.unet + shapes.text_encoders, config)
    assert real < bound < 4 * real + (1 << 20)


def test_a_broken_model_is_refused_from_its_header(tmp_path, no_model_load):
    config = tiny_job(tmp_path)
    data = open(config.model, "rb").read()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(data[:-1000])
    with pytest.raises(UserError, match="truncated or corrupt safetensors"):
        run_job(config.with_values(model=str(broken)), output_dir=tmp_path / "out")


@pytest.mark.parametrize("fmt, name", [("diffusers", "tiny_diffusers"), ("ckpt", "tiny.ckpt")])
def test_weight_shapes_are_the_same_in_every_format(tmp_path, fmt, name):
    single = write_tiny_model("sd1", "single-file", tmp_path / "tiny.safetensors")
    if fmt == "ckpt":
        from safetensors.torch import load_file

        torch.save({"state_dict": load_file(str(single))}, tmp_path / name)
        other = tmp_path / name
    else:
        other = write_tiny_model("sd1", "diffusers", tmp_path / name)
    first, second = read_weight_shapes(single), read_weight_shapes(other)
    assert first.family == second.family
    assert sorted(first.unet) == sorted(second.unet)
    assert sorted(first.text_encoders) == sorted(second.text_encoders)


def test_images_pass_when_one_decodes(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"broken")
    Image.new("RGB", (8, 8)).save(folder / "b.png")
    config = TrainConfig(lora_data_directory=str(folder))
    get_mode(config.mode).check_images(config)


def test_an_unwritable_latent_cache_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="latent_cache_dir .* is not a writable folder"):
        check_latent_cache_dir(TrainConfig(latent_cache_dir=str(tmp_path / "file" / "cache")))


def test_a_new_job_clears_stale_temporaries_of_its_files_only(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".job.safetensors.x1.tmp").write_bytes(b"half")
    (out / ".other.safetensors.x2.tmp").write_bytes(b"half")
    run_job(tiny_job(tmp_path, train_iterations=1), output_dir=out)
    assert sorted(p.name for p in out.iterdir()) == [".other.safetensors.x2.tmp", "job.safetensors"]
