"""gen_noise_scheduler: the sampler preview images are rendered with."""

import diffusers
import pytest
from diffusers.utils import is_scipy_available

from helpers import tiny_components
from job_helpers import tiny_job
from traintrain.choices import NoiseScheduler
from traintrain.errors import UserError
from traintrain.jobs.runner import run_job
from traintrain.rendering import SAMPLERS, pipeline_from_components


@pytest.fixture(scope="module")
def components():
    return tiny_components()


@pytest.mark.parametrize("sampler", list(NoiseScheduler))
def test_each_sampler_is_its_diffusers_class(components, sampler):
    if sampler == NoiseScheduler.LMS and not is_scipy_available():
        with pytest.raises(UserError, match="gen_noise_scheduler"):
            pipeline_from_components(components, sampler)
        return
    scheduler = pipeline_from_components(components, sampler).scheduler
    name, options = SAMPLERS[sampler]
    assert type(scheduler) is getattr(diffusers, name)
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.num_train_timesteps == 1000
    for key, value in options.items():
        assert scheduler.config[key] == value


def test_v_prediction_reaches_the_sampler():
    components = tiny_components()
    components.v_prediction = True
    scheduler = pipeline_from_components(components, NoiseScheduler.EULER_A).scheduler
    assert scheduler.config.prediction_type == "v_prediction"


def test_previews_use_the_chosen_sampler(tmp_path, monkeypatch):
    import traintrain.modes.previews as previews

    used = []
    original = previews.generate

    def recording(pipe, *args, **kwargs):
        used.append(type(pipe.scheduler))
        return original(pipe, *args, **kwargs)

    monkeypatch.setattr(previews, "generate", recording)
    config = tiny_job(tmp_path, train_iterations=1, preview_prompts="a red circle", preview_sampling_steps=2,
                      gen_noise_scheduler="Euler a")
    result = run_job(config, output_dir=tmp_path / "out")
    assert result.path.is_file()
    assert used and all(cls is diffusers.EulerAncestralDiscreteScheduler for cls in used)


@pytest.mark.skipif(is_scipy_available(), reason="scipy is installed here: LMS works")
def test_a_missing_sampler_library_fails_before_training(tmp_path):
    config = tiny_job(tmp_path, gen_noise_scheduler="LMS", preview_prompts="a red circle")
    with pytest.raises(UserError, match="LMS sampler needs scipy") as info:
        run_job(config, output_dir=tmp_path / "out")
    assert info.value.field == "gen_noise_scheduler" and not (tmp_path / "out").exists()
