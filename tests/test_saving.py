"""Periodic saves, refusal to overwrite before training, seeds recorded and reproducible, JSON archive."""

import json
import re

import pytest
import torch

from job_helpers import tiny_job
from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.jobs.runner import run_job
from traintrain.networks.kohya_format import load_lora
from traintrain.training.events import Message, Progress


@pytest.mark.parametrize("iterations, every, expected", [
    (5, 2, ["job.safetensors", "job_2steps.safetensors", "job_4steps.safetensors"]),
    (4, 2, ["job.safetensors", "job_2steps.safetensors"]),  # the last step is the final file, not _4steps
    (3, 0, ["job.safetensors"]),
])
def test_save_per_steps_writes_exactly_the_expected_files(tmp_path, iterations, every, expected):
    config = tiny_job(tmp_path, train_iterations=iterations, save_per_steps=every)
    run_job(config, output_dir=tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".safetensors") == expected
    if every:
        assert load_lora(tmp_path / "out" / "job_2steps.safetensors")[1]["ss_steps"] == "2"


def test_existing_file_stops_the_job_before_any_training(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "job.safetensors").write_bytes(b"previous")

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("traintrain.models.loading.load_model", no_load)
    events = []
    with pytest.raises(UserError, match="job.safetensors already exists.*save_overwrite=true"):
        run_job(tiny_job(tmp_path), output_dir=out, report=events.append)
    assert not [e for e in events if isinstance(e, Progress)]
    assert (out / "job.safetensors").read_bytes() == b"previous"


def test_save_overwrite_replaces_the_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "job.safetensors").write_bytes(b"previous")
    result = run_job(tiny_job(tmp_path, save_overwrite=True, train_iterations=1), output_dir=out)
    assert load_lora(result.path)[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA attention backward is not bitwise reproducible")
def test_same_seed_same_weights(tmp_path):
    first = run_job(tiny_job(tmp_path, save_lora_name="a", train_seed=11), output_dir=tmp_path / "out")
    second = run_job(tiny_job(tmp_path, save_lora_name="b", train_seed=11), output_dir=tmp_path / "out")
    a, b = load_lora(first.path)[0], load_lora(second.path)[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first.losses == second.losses


def test_random_seed_is_recorded(tmp_path):
    events = []
    chosen = run_job(tiny_job(tmp_path, train_seed=-1, train_iterations=1), output_dir=tmp_path / "out",
                     report=events.append)
    assert chosen.seed >= 0
    assert load_lora(chosen.path)[1]["ss_seed"] == str(chosen.seed)
    assert any(f"seed {chosen.seed}" in e.text for e in events if isinstance(e, Message))


def test_save_as_json_archives_the_settings_by_date(tmp_path):
    config = tiny_job(tmp_path, save_as_json=True, train_iterations=1, train_optimizer="Lion")
    run_job(config, output_dir=tmp_path / "out")
    days = list((tmp_path / "out" / "json").iterdir())
    assert len(days) == 1 and re.fullmatch(r"\d{8}", days[0].name)
    files = list(days[0].iterdir())
    assert len(files) == 1 and re.fullmatch(r"job_\d{6}\.json", files[0].name)
    assert TrainConfig.load_json(files[0]) == config
    assert json.loads(files[0].read_text())["train_optimizer"] == "Lion"
