"""The preview before the first step: the untouched model, so later previews show what training changed."""

import threading

import numpy as np
import pytest
from PIL import Image

from job_helpers import tiny_job
from traintrain.errors import TrainingStopped
from traintrain.jobs.runner import resume_job, run_job
from traintrain.models.loading import load_model
from traintrain.modes.previews import MULTIPLIERS
from traintrain.rendering import generate, labelled_grid, pipeline_from_components
from traintrain.training.events import PREVIEW, Progress, Saved, Written

PREVIEWS = dict(preview_prompts="tt, a red circle", preview_every_steps=2, preview_sampling_steps=2,
                train_iterations=4, train_learning_rate=3e-2, train_batch_size=1)


def preview_messages(events):
    return [f"previews: {e.path}" for e in events if isinstance(e, Written) and e.kind == PREVIEW]


def as_array(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("previews")
    tiny_job(root)  # writes the model and images once
    return root


def test_step_0_preview_is_the_base_model(root, tmp_path):
    config = tiny_job(root, **PREVIEWS)
    events = []
    result = run_job(config, output_dir=tmp_path, report=events.append)
    before = tmp_path / "job_0steps_preview.png"
    first_step = next(i for i, e in enumerate(events) if isinstance(e, Progress))
    assert preview_messages(events[:first_step]) == [f"previews: {before}"]  # rendered and reported before step 1
    assert preview_messages(events[first_step:]) == [f"previews: {tmp_path / 'job_2steps_preview.png'}",
                                                     f"previews: {tmp_path / 'job_preview.png'}"]

    base = pipeline_from_components(load_model(config.model))
    base.set_progress_bar_config(disable=True)
    images = generate(base, ["tt, a red circle"], (64, 64), seed=result.seed, steps=2)
    expected = labelled_grid([images] * len(MULTIPLIERS), [f"LoRA x{m:+g}" for m in MULTIPLIERS])
    assert np.array_equal(as_array(before), np.asarray(expected).astype(int))

    for later in ("job_2steps_preview.png", "job_preview.png"):
        assert np.abs(as_array(tmp_path / later) - as_array(before)).mean() > 1, later  # training changed them


def test_a_resumed_run_does_not_render_it_again(root, tmp_path):
    config = tiny_job(root, **PREVIEWS, save_per_steps=2)
    stop = threading.Event()

    def stop_at_first_save(event):
        if isinstance(event, Saved) and event.step == 2:
            stop.set()

    with pytest.raises(TrainingStopped) as stopped:
        run_job(config, output_dir=tmp_path, report=stop_at_first_save, stop=stop)
    before = tmp_path / "job_0steps_preview.png"
    assert before.is_file()
    before.unlink()
    events = []
    resume_job(stopped.value.state, report=events.append)
    assert not before.exists()
    assert preview_messages(events) == [f"previews: {tmp_path / 'job_preview.png'}"]
