"""Continue training: a finished run with save_state keeps its state and trains on to more steps,
ending where one straight run of that length ends."""

import pytest
import torch

from job_helpers import tiny_job
from traintrain.cli import main
from traintrain.errors import UserError
from traintrain.jobs.runner import resume_job, run_job
from traintrain.networks.kohya_format import load_lora


def constant_job(root, **extra):
    return tiny_job(root, train_lr_scheduler="constant", image_mirroring=True, **extra)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("continue")
    tiny_job(root)
    return root


@pytest.fixture(scope="module")
def straight(root, tmp_path_factory):
    """One run of 7 steps, the reference."""
    folder = tmp_path_factory.mktemp("straight")
    return run_job(constant_job(root, train_iterations=7), output_dir=folder)


def test_a_finished_run_continues_bit_identical_to_a_straight_run(root, straight, tmp_path):
    first = run_job(constant_job(root, train_iterations=4, save_state=True), output_dir=tmp_path)
    state = tmp_path / "job.state"
    assert first.path == tmp_path / "job.safetensors" and state.is_file()  # kept: the run can go on

    more = resume_job(state, train_iterations=7)
    assert more.path == tmp_path / "job_7steps.safetensors"  # the first result keeps its name
    assert (tmp_path / "job.safetensors").is_file() and (tmp_path / "job_7steps.state").is_file()
    reference, _ = load_lora(straight.path)
    continued, metadata = load_lora(more.path)
    assert metadata["ss_max_train_steps"] == "7"
    assert reference.keys() == continued.keys()
    for key in reference:
        assert torch.equal(reference[key], continued[key]), key
    assert more.losses == straight.losses  # the loss history goes on from the first run's


def test_without_save_state_no_state_is_left(root, tmp_path):
    run_job(constant_job(root, train_iterations=2, save_per_steps=1), output_dir=tmp_path)
    assert not list(tmp_path.glob("*.state"))


def test_a_finished_state_needs_more_steps(root, tmp_path):
    run_job(constant_job(root, train_iterations=2, save_state=True), output_dir=tmp_path)
    with pytest.raises(UserError, match="finished run of 2 steps; set train_iterations above 2") as info:
        resume_job(tmp_path / "job.state")
    assert info.value.field == "train_iterations"


def test_the_cli_continues_with_set_train_iterations(root, tmp_path, capsys):
    run_job(constant_job(root, train_iterations=2, save_state=True), output_dir=tmp_path)
    assert main(["train", "--resume", str(tmp_path / "job.state"), "--set", "train_iterations=3"]) == 0
    assert f"saved {tmp_path / 'job_3steps.safetensors'}" in capsys.readouterr().out
    assert main(["train", "--resume", str(tmp_path / "job.state"), "--set", "network_rank=8"]) == 2
    assert "only --set train_iterations=N may change" in capsys.readouterr().err
