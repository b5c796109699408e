"""Options of the original extension that change how steps draw noise and timesteps, and what iLECO trains."""

import pytest
import torch
from diffusers import DDPMScheduler

from job_helpers import tiny_job
from test_addift import config_for, picture
from traintrain.jobs.runner import run_job
from traintrain.models.tiny import write_tiny_model
from traintrain.modes.denoising import FixedNoise, training_timesteps
from traintrain.networks.kohya_format import load_lora


@pytest.fixture()
def noised(monkeypatch):
    """Every (noise, timesteps) the training scheduler adds, in call order."""
    calls = []
    original = DDPMScheduler.add_noise

    def recording(self, latents, noise, timesteps):
        calls.append((noise.clone(), timesteps.clone()))
        return original(self, latents, noise, timesteps)

    monkeypatch.setattr(DDPMScheduler, "add_noise", recording)
    return calls


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    return picture(folder / "open.png", False), picture(folder / "closed.png", True)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("options")


def test_fixed_noise_is_drawn_once_per_shape_from_the_seed():
    noise = FixedNoise(7)
    first = noise((2, 4, 8, 8))
    assert noise((2, 4, 8, 8)) is first
    assert torch.equal(FixedNoise(7)((2, 4, 8, 8)), first)  # a resumed run gets the same noise
    assert not torch.equal(FixedNoise(8)((2, 4, 8, 8)), first)


def test_shared_timesteps():
    generator = torch.Generator().manual_seed(0)
    shared = training_timesteps(5, 0, 1000, generator, shared=True)
    assert shared.shape == (5,) and (shared == shared[0]).all()
    assert len(set(training_timesteps(64, 0, 1000, generator).tolist())) > 1


@pytest.mark.parametrize("mode", ["ADDifT", "Difference"])
def test_diff_use_fixed_noise_repeats_the_noise_every_step(pair, tmp_path, noised, mode):
    extra = {"diff_1st_pass_only": True} if mode == "Difference" else {}
    model = write_tiny_model("sd1", "single-file", tmp_path / "tiny.safetensors")
    values = dict(mode=mode, original_image=str(pair[0]), target_image=str(pair[1]), train_iterations=3,
                  train_batch_size=2, **extra)
    run_job(config_for(model, diff_use_fixed_noise=True, save_lora_name="fixed", **values), output_dir=tmp_path / "out")
    fixed = [noise for noise, _ in noised]
    assert len(fixed) >= 3 and all(torch.equal(n, fixed[0]) for n in fixed)
    noised.clear()
    run_job(config_for(model, save_lora_name="fresh", **values), output_dir=tmp_path / "out")
    fresh = [noise for noise, _ in noised]
    assert not torch.equal(fresh[0], fresh[-1])


def test_fixed_timesteps_in_batch_for_lora_and_addift(root, pair, tmp_path, noised):
    run_job(tiny_job(root, train_fixed_timsteps_in_batch=True, train_batch_size=2), output_dir=tmp_path / "lora")
    assert noised and all(t.shape == (2,) and t[0] == t[1] for _, t in noised)
    noised.clear()
    run_job(tiny_job(root, train_batch_size=2, train_iterations=6), output_dir=tmp_path / "plain")
    assert any(t[0] != t[1] for _, t in noised)  # fresh per sample without the option
    noised.clear()
    addift = config_for(root / "tiny.safetensors", mode="ADDifT", original_image=str(pair[0]), target_image=str(pair[1]),
                        train_batch_size=2, image_mirroring=True, train_fixed_timsteps_in_batch=True, train_min_timesteps=0,
                        train_max_timesteps=1000)
    run_job(addift, output_dir=tmp_path / "addift")
    assert noised and all(t[0] == t[1] for _, t in noised)


def _text_encoder_ups(path):
    tensors, _ = load_lora(path)
    return {k: v for k, v in tensors.items() if k.startswith("lora_te") and k.endswith("lora_up.weight")}


def test_ileco_trains_the_text_encoder_only_with_the_option(root, tmp_path):
    values = dict(mode="iLECO", original_prompt="a red circle", target_prompt="a blue square", train_iterations=4,
                  train_learning_rate=1e-2, network_blocks=["IN01", "OUT03"])
    with_te = run_job(tiny_job(root, network_train_text_encoder=True, save_lora_name="te", **values),
                      output_dir=tmp_path / "out")
    ups = _text_encoder_ups(with_te.path)
    assert ups and any(v.abs().max() > 0 for v in ups.values())  # up starts at zero: it was trained
    without = run_job(tiny_job(root, save_lora_name="unet", **values), output_dir=tmp_path / "out")
    assert not _text_encoder_ups(without.path)
