"""Resume: a run stopped at step k and resumed from its state ends bit-identical to an uninterrupted run."""

import threading

import pytest
import torch
from PIL import Image, ImageDraw

from job_helpers import tiny_job
from traintrain.errors import UserError
from traintrain.jobs.runner import resume_job, run_job
from traintrain.networks.kohya_format import load_lora
from traintrain.training.events import Progress, Saved
from traintrain.errors import TrainingStopped

STEPS = dict(train_iterations=8, save_per_steps=4)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("resume"))


def write_inputs(root):
    """The tiny model, the LoRA images and the Difference pair under `root`, as `job` uses them."""
    tiny_job(root)  # writes the model and images once
    for name, color in (("original", (200, 40, 40)), ("target", (40, 60, 200))):
        image = Image.new("RGB", (64, 64), (235, 235, 225))
        ImageDraw.Draw(image).ellipse((14, 14, 50, 50), fill=color)
        image.save(root / f"{name}.png")
    return root


def job(root, mode, **extra):
    pair = dict(original_image=str(root / "original.png"), target_image=str(root / "target.png"))
    values = {
        "LoRA": dict(train_optimizer="AdamW", image_mirroring=True, train_lr_scheduler="cosine"),
        "iLECO": dict(mode="iLECO", original_prompt="a red circle", target_prompt="a blue square", image_size=[64, 64],
                      preview_sampling_steps=1),
        "Difference": dict(mode="Difference", diff_save_1st_pass=True, image_mirroring=True, train_seed=6, **pair),
    }[mode]
    return tiny_job(root, **{**STEPS, **values, **extra})


@pytest.fixture(scope="module")
def uninterrupted(root, tmp_path_factory):
    """The uninterrupted run of each mode, made once."""
    runs = {}

    def run(mode):
        if mode not in runs:
            folder = tmp_path_factory.mktemp(f"whole_{mode}")
            runs[mode] = (run_job(job(root, mode), output_dir=folder), folder)
        return runs[mode]

    return run


def stop_when(condition):
    """A reporter that requests a stop when an event matches, as Ctrl-C or the UI's Stop button do."""
    stop = threading.Event()

    def report(event):
        if condition(event):
            stop.set()

    return stop, report


def tensors(path):
    return load_lora(path)[0]


def assert_identical(first, second):
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def at_saved_step(step):
    return lambda event: isinstance(event, Saved) and event.step == step


@pytest.mark.parametrize("mode, phase, condition", [
    ("LoRA", "LoRA", at_saved_step(4)),
    ("iLECO", "iLECO", at_saved_step(4)),
    ("Difference", "difference", at_saved_step(4)),
    ("Difference", "copier", lambda e: isinstance(e, Progress) and e.phase == "copier" and e.step == 3),
])
def test_resumed_run_is_bit_identical(root, uninterrupted, tmp_path, mode, phase, condition):
    config = job(root, mode)
    whole, whole_folder = uninterrupted(mode)
    assert not list(whole_folder.glob("*.state")), "a completed run keeps no state"

    stop, report = stop_when(condition)
    with pytest.raises(TrainingStopped) as info:
        run_job(config, output_dir=tmp_path / "cut", report=report, stop=stop)
    stopped = info.value
    assert stopped.phase == phase and stopped.state.is_file() and stopped.saved.is_file()
    assert stopped.state.name == stopped.saved.name.replace(".safetensors", ".state")
    assert not (tmp_path / "cut" / "job.safetensors").exists()

    events = []
    resumed = resume_job(stopped.state, report=events.append)
    progress = [e for e in events if isinstance(e, Progress) and e.phase == phase]
    assert progress[0].step == stopped.step + 1
    assert resumed.path == tmp_path / "cut" / "job.safetensors"
    assert_identical(tensors(whole.path), tensors(resumed.path))
    assert resumed.losses == whole.losses
    if mode == "Difference":
        assert_identical(tensors(whole_folder / "job_copy.safetensors"), tensors(tmp_path / "cut" / "job_copy.safetensors"))


@pytest.mark.parametrize("sync_every", [0, 3])  # 3: the stop at step 6 reads steps 4-6 back before saving
def test_stop_state_keeps_only_the_newest_and_resumes_into_another_folder(root, tmp_path, sync_every):
    config = job(root, "LoRA", train_iterations=8, save_per_steps=2, train_sync_every=sync_every)
    stop, report = stop_when(at_saved_step(6))
    with pytest.raises(TrainingStopped):
        run_job(config, output_dir=tmp_path / "a", report=report, stop=stop)
    assert sorted(p.name for p in (tmp_path / "a").glob("job_*")) == [
        "job_2steps.safetensors", "job_4steps.safetensors", "job_6steps.safetensors", "job_6steps.state",
    ]
    result = resume_job(tmp_path / "a" / "job_6steps.state", output_dir=tmp_path / "b")
    assert result.path == tmp_path / "b" / "job.safetensors" and len(result.losses) == 8
    assert result.losses == run_job(config, output_dir=tmp_path / "c").losses


def test_bad_state_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        resume_job(tmp_path / "missing.state")
    junk = tmp_path / "junk.state"
    junk.write_bytes(b"not a state")
    with pytest.raises(UserError, match="not a TrainTrain state"):
        resume_job(junk)
