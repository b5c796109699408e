"""The mode registry: built-in modes found from their files, a new mode added from one file."""

import importlib.util
import sys
import textwrap

import pytest

from traintrain.config import TrainConfig, field_names
from traintrain.errors import UserError
from traintrain.jobs.runner import run_job
from traintrain.models.tiny import write_tiny_model
from traintrain.modes.registry import claimed_fields, fields_for, get_mode, mode_names
from traintrain.networks.kohya_format import load_lora

# A complete mode in one file, as docs/adding-a-mode.md describes: a LoRA that learns to predict
# zero noise for one prompt on one fixed latent (a tiny "erase everything" mode).
ZERO_MODE = '''
"""Zero: the adapted model predicts no noise for `original_prompt` (a test mode)."""
import torch

from traintrain.errors import UserError
from traintrain.modes.common import build_network, fixed_conditionings, prompt_only_spec, train_result_network
from traintrain.modes.denoising import unet_predict
from traintrain.modes.registry import ModeOutcome, TrainingMode, register


@register
class ZeroMode(TrainingMode):
    name = "Zero"
    summary = "predict no noise for a prompt"
    fields = ("original_prompt",)
    phases = ("zero",)

    def check_inputs(self, config):
        if not config.original_prompt:
            raise UserError("Zero needs original_prompt", "give the prompt", field="original_prompt")

    def default_preview_prompts(self, config):
        return [config.original_prompt]

    def train(self, config, components, run) -> ModeOutcome:
        network = build_network(components, prompt_only_spec(config), run)
        (cond,) = fixed_conditionings(components, [config.original_prompt])
        latent = torch.randn(1, 4, 8, 8, generator=run.generator)

        def compute_loss(step):
            timesteps = torch.full((1,), 500)
            return unet_predict(components, latent, timesteps, cond).float().pow(2).mean()

        outcome = train_result_network("zero", network, config, compute_loss, components, run)
        outcome.extras["latent"] = latent
        return outcome
'''


@pytest.fixture(scope="module")
def zero_mode(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin") / "zero_mode.py"
    path.write_text(textwrap.dedent(ZERO_MODE))
    spec = importlib.util.spec_from_file_location("zero_mode", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["zero_mode"] = module
    spec.loader.exec_module(module)
    return module


def test_built_in_modes_are_found_from_their_files():
    assert mode_names()[:5] == ["LoRA", "iLECO", "Difference", "ADDifT", "Multi-ADDifT"]
    assert TrainConfig(mode="ileco").mode == "iLECO"  # matched case-insensitively
    with pytest.raises(UserError, match="'lecco' is not one of: LoRA, iLECO, Difference, ADDifT, Multi-ADDifT") as info:
        TrainConfig(mode="lecco")
    assert info.value.field == "mode"


def test_each_mode_shows_its_own_fields_and_the_shared_ones():
    lora, ileco, difference = fields_for("LoRA"), fields_for("iLECO"), fields_for("Difference")
    assert "lora_data_directory" in lora and "lora_data_directory" not in ileco
    assert "target_prompt" in ileco and "target_prompt" not in lora
    assert "use_2nd_pass_settings" in difference and "use_2nd_pass_settings" not in ileco
    for shared in ("model", "network_rank", "train_learning_rate", "save_lora_name"):
        assert shared in lora and shared in ileco and shared in difference
    assert claimed_fields() <= set(field_names())


def test_a_mode_from_one_file_runs_through_run_job(zero_mode, tmp_path):
    model = write_tiny_model("sd1", "single-file", tmp_path / "tiny.safetensors")
    assert "Zero" in mode_names() and fields_for("Zero").count("original_prompt") == 1
    config = TrainConfig(mode="zero", model=str(model), original_prompt="a red circle", train_iterations=12,
                         train_learning_rate=1e-2, network_element="CrossAttention", train_lr_scheduler="constant",
                         train_model_precision="fp32", save_precision="fp32", save_lora_name="zero", train_seed=1,
                         image_size=[64, 64], preview_sampling_steps=2)
    assert get_mode("Zero").planned_files(config) == ["zero.safetensors", "zero_preview.png"]
    result = run_job(config, output_dir=tmp_path / "out")
    assert result.path == tmp_path / "out" / "zero.safetensors" and result.outcome.preview.is_file()
    tensors, metadata = load_lora(result.path)
    assert metadata["traintrain_mode"] == "Zero" and tensors
    assert len(result.losses) == 12 and result.losses[-1] < result.losses[0]
    assert result.outcome.extras["latent"].shape == (1, 4, 8, 8)


def test_a_mode_checks_its_inputs_before_the_model_loads(zero_mode, tmp_path):
    config = TrainConfig(mode="Zero", model=str(tmp_path / "never_read.safetensors"))
    with pytest.raises(UserError, match="Zero needs original_prompt") as info:
        run_job(config, output_dir=tmp_path / "out")
    assert info.value.field == "original_prompt" and not (tmp_path / "out").exists()


def test_a_second_mode_of_the_same_name_is_refused():
    from traintrain.modes.registry import TrainingMode, register

    class Impostor(TrainingMode):
        name = "LoRA"
        phases = ()

        def train(self, config, components, run):
            raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        register(Impostor)
