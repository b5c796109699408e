"""Nothing outside the output folder, pickles never executed, settings JSON checked by type."""

import os
from pathlib import Path

import pytest
import torch

from job_helpers import tiny_job
from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.jobs.runner import run_job
from traintrain.models.checkpoint_reading import read_checkpoint
from traintrain.models.loading import read_weight_shapes
from traintrain.presets import load_preset
from traintrain.training.saving import OutputPlan, check_save_name


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture
def malicious_ckpt(tmp_path):
    path = tmp_path / "model.ckpt"
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Payload(marker)}, path)
    return path, marker


def test_a_malicious_pickle_is_refused_and_never_run(malicious_ckpt):
    path, marker = malicious_ckpt
    for read in (read_checkpoint, read_weight_shapes):
        with pytest.raises(UserError, match="unsafe pickle loading"):
            read(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: unsafe loading runs it
    assert marker.exists()


def test_a_job_with_a_malicious_model_stops_before_anything_runs(tmp_path, malicious_ckpt):
    path, marker = malicious_ckpt
    with pytest.raises(UserError, match="unsafe pickle loading"):
        run_job(tiny_job(tmp_path).with_values(model=str(path)), output_dir=tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../evil", "sub/evil", "..", "a\\b", "/abs/evil", "x/../../y"])
def test_save_names_that_are_paths_are_refused_before_anything_is_written(tmp_path, name):
    with pytest.raises(UserError, match="save_lora_name"):
        run_job(tiny_job(tmp_path, save_lora_name=name), output_dir=tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "tiny.safetensors", "tiny.tokenizer"]


def test_suffixes_cannot_leave_the_output_folder(tmp_path):
    plan = OutputPlan(tmp_path, check_save_name("job"))
    assert plan.path("_2steps") == tmp_path / "job_2steps.safetensors"
    with pytest.raises(UserError):
        plan.path("/../../etc/x")


@pytest.mark.parametrize("name", ["../LoRA", "presets/LoRA", "..", "LoRA\\..\\x", "/etc/passwd"])
def test_preset_names_with_path_parts_are_refused(name):
    with pytest.raises(UserError, match="preset name"):
        load_preset(name)


def test_preset_names_are_matched_not_opened():
    assert load_preset(" lora ").network_rank == 16
    with pytest.raises(UserError, match="unknown preset"):
        load_preset("__init__")


@pytest.mark.parametrize("data, message", [
    ({"network_rank": [16]}, "network_rank: expected a number, got a list"),
    ({"save_lora_name": {"a": 1}}, "save_lora_name: expected text, got an object"),
    ({"model": True}, "model: expected text, got a boolean"),
    ({"image_mirroring": "maybe"}, "image_mirroring: 'maybe' is not a boolean"),
    ({"network_blocks": [1, 2]}, "network_blocks: expected names in the list, got a number"),
    ({"image_size": {"h": 512}}, "image_size: expected a comma-separated list, got an object"),
    ({"network_type": ["lierla"]}, "network_type: expected one of lierla, c3lier, loha, lokr, got a list"),
    ({"network_alpha": float("nan")}, "network_alpha: expected a finite number"),
    ({"2nd pass": {"network_rank": []}}, "network_rank: expected a number, got a list"),
    ({"2nd pass": {"network_rnk": 4}}, "unknown parameter 'network_rnk'"),
    ({"2nd pass": []}, "'2nd pass' must be an object of parameters, got a list"),
])
def test_settings_json_is_checked_by_type(data, message):
    with pytest.raises(UserError) as error:
        TrainConfig.from_json_dict(data, source="my.json")
    assert message in str(error.value) and "my.json" in str(error.value)
