"""Previews: the one before the first step shows the untouched model, so later previews show what training
changed; every family renders them (SD3 and Z-Image through their own diffusers pipelines)."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import randomize_network
from job_helpers import tiny_job
from sample_images import write_demo_images
from traintrain.choices import ALL_BLOCK_IDS
from traintrain.config import TrainConfig
from traintrain.errors import TrainingStopped
from traintrain.jobs.runner import resume_job, run_job
from traintrain.models.encoding import encode_prompts
from traintrain.models.families import Family
from traintrain.models.loading import load_model
from traintrain.models.tiny import build_tiny_components, write_tiny_model
from traintrain.models.zimage_text import prompt_states
from traintrain.modes.previews import MULTIPLIERS
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from traintrain.rendering import (
    ROW_TITLE_MIN_WIDTH,
    generate,
    labelled_grid,
    pipeline_from_components,
    recipe_of,
    usual_guidance,
)
from traintrain.training.events import PREVIEW, Message, Progress, Saved, Written

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
    images = generate(base, ["tt, a red circle"], (64, 64), seed=result.seed, steps=2, guidance=7.0)  # SD's usual
    expected = labelled_grid([images] * len(MULTIPLIERS), [f"LoRA x{m:+g}" for m in MULTIPLIERS],
                             row_titles=["tt, a red circle"])
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


@pytest.mark.parametrize("family", [Family.SD3, Family.ZIMAGE])
def test_sd3_and_zimage_render_with_the_network(family):
    """StableDiffusion3Pipeline / ZImagePipeline on the loaded modules: the requested size, and the network's
    multiplier changes the picture."""
    components = build_tiny_components(family)
    network = AdapterNetwork(components, NetworkSpec(rank=2, alpha=2, blocks=list(ALL_BLOCK_IDS))).apply()
    randomize_network(network, scale=0.5)
    pipe = pipeline_from_components(components)
    pipe.set_progress_bar_config(disable=True)
    pictures = []
    for multiplier in (0.0, 1.0):
        network.set_multiplier(multiplier)
        image = generate(pipe, ["a red circle"], (48, 64), seed=1, steps=2, negative_prompt="a blue square")[0]
        assert image.size == (64, 48)  # width x height
        pictures.append(np.asarray(image).astype(int))
    assert np.abs(pictures[1] - pictures[0]).mean() > 1


@pytest.mark.parametrize("family, encoders", [(Family.SD3, 3), (Family.SD3, 2), (Family.ZIMAGE, 1)])
def test_the_preview_pipeline_conditions_as_training_does(family, encoders):
    """The pipeline's prompt states, called with the options previews pass, are those training encodes (SD3
    without T5: zeros of CLIP's 77 tokens in T5's place)."""
    components = build_tiny_components(family)
    del components.text_encoders[encoders:], components.tokenizers[encoders:]
    pipe = pipeline_from_components(components)
    length = recipe_of(pipe).call_options(pipe)["max_sequence_length"]
    prompts = ["a photo of a cat", "dog"]
    with torch.no_grad():
        ours = encode_prompts(components, prompts)
        if family is Family.SD3:
            hidden, _, pooled, _ = pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=False,
                                                      max_sequence_length=length)
            assert torch.equal(ours.hidden, hidden) and torch.equal(ours.pooled, pooled)
        else:
            states, _ = pipe.encode_prompt(list(prompts), torch.device("cpu"), do_classifier_free_guidance=False,
                                           max_sequence_length=length)
            assert all(torch.equal(a, b) for a, b in zip(prompt_states(ours), states, strict=True))


@pytest.mark.parametrize("family, model, name", [("sd3", "single-file", "sd3-tiny.safetensors"),
                                                ("zimage", "diffusers", "zimage-tiny")])
def test_sd3_and_zimage_jobs_render_previews(tmp_path, family, model, name):
    """Before, during and after training, and no warning that the family trains without previews."""
    path = write_tiny_model(family, model, tmp_path / name)
    write_demo_images(tmp_path / "images")
    config = TrainConfig(
        model=str(path), lora_data_directory=str(tmp_path / "images"), network_rank=2, network_alpha=2,
        train_iterations=2, train_batch_size=1, train_learning_rate=1e-2, image_size=[64, 64],
        image_buckets_step=64, image_min_length=64, train_model_precision="fp32", save_precision="fp32",
        train_seed=3, save_lora_name="job", preview_prompts="a red circle", preview_every_steps=1,
        preview_sampling_steps=2,
    )
    events = []
    run_job(config, output_dir=tmp_path / "out", report=events.append)
    written = [e.path for e in events if isinstance(e, Written) and e.kind == PREVIEW]
    assert written == [str(tmp_path / "out" / name) for name in
                       ("job_0steps_preview.png", "job_1steps_preview.png", "job_preview.png")]
    assert Image.open(written[-1]).size == (ROW_TITLE_MIN_WIDTH + 64 * len(MULTIPLIERS), 18 + 64)
    assert not [e.text for e in events if isinstance(e, Message) and e.level == "warning" and "preview" in e.text]


@pytest.mark.parametrize("family, source, usual", [
    (Family.SD1, "m.safetensors", 7.0), (Family.SDXL, "xl.safetensors", 7.0), (Family.SD3, "sd3.5.safetensors", 7.0),
    (Family.FLUX, "flux1-dev.safetensors", 3.5), (Family.ZIMAGE, "/models/Z-Image", 5.0),
    (Family.ZIMAGE, "/models/Z-Image-Turbo", 0.0), (Family.ZIMAGE, "/m/z_image_turbo_bf16.safetensors", 0.0),
])
def test_previews_use_the_guidance_the_model_is_usually_sampled_with(family, source, usual):
    class Loaded:  # what usual_guidance reads of a loaded model
        pass

    loaded = Loaded()
    loaded.family, loaded.source = family, source
    assert usual_guidance(loaded) == usual


@pytest.mark.parametrize("asked, used", [(0.0, 7.0), (2.5, 2.5)])
def test_preview_guidance_overrides_the_usual_one(root, tmp_path, monkeypatch, asked, used):
    from traintrain.modes import previews

    seen = []
    real = previews.generate

    def recording(*args, guidance, **kwargs):
        seen.append(guidance)
        return real(*args, guidance=guidance, **kwargs)

    monkeypatch.setattr(previews, "generate", recording)
    run_job(tiny_job(root, preview_prompts="a cat", preview_sampling_steps=1, train_iterations=1,
                     preview_guidance=asked), output_dir=tmp_path)
    assert seen and set(seen) == {used}
