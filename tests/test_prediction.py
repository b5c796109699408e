"""v-prediction found as A1111 finds it on SD2 single files without a yaml; the setting overrides it.

Two tiny SD2 UNets are fitted for a few dozen steps at late timesteps, one on the v objective and
one on epsilon, on latents around 1.5 (so the clean latent a v model predicts at the last timestep
is clearly away from the epsilon model's answer, as on real SD2 models: the v one reaches about -2,
the epsilon one stays about -0.35), then saved as single files without a yaml.
"""

import pytest
import torch

from sample_images import write_demo_images
from traintrain.cli import main
from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.models.families import Family
from traintrain.models.loading import load_model
from traintrain.models.prediction import V_THRESHOLD, probe_v_prediction
from traintrain.models.tiny import build_tiny_components, write_tiny_model
from traintrain.networks.kohya_format import load_lora
from traintrain.training.runtime import noise_scheduler

FIT_STEPS = 40


def fitted_sd2(v_prediction: bool, seed: int = 0):
    """A tiny SD2 model whose UNet learnt to denoise latents ~ N(1.5, 0.3) at timesteps 700-999."""
    components = build_tiny_components(Family.SD2, seed)
    unet, scheduler = components.unet, noise_scheduler(v_prediction)
    width = unet.config.cross_attention_dim
    optimizer = torch.optim.AdamW(unet.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    unet.train()
    for _ in range(FIT_STEPS):
        clean = 1.5 + 0.3 * torch.randn(4, 4, 8, 8, generator=generator)
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(700, 1000, (4,), generator=generator)
        context = 0.5 + 0.1 * torch.randn(4, 77, width, generator=generator)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        target = scheduler.get_velocity(clean, noise, timesteps) if v_prediction else noise
        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps, encoder_hidden_states=context).sample, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unet.eval()
    return components


@pytest.fixture(scope="module")
def fitted_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("prediction")
    write_demo_images(root / "images")
    return root, {
        kind: write_tiny_model(Family.SD2, "single-file", root / f"{kind}.safetensors",
                               components=fitted_sd2(kind == "v"))
        for kind in ("v", "epsilon")
    }


def test_the_probe_tells_the_objectives_apart(fitted_files):
    _, files = fitted_files
    v_model, epsilon_model = load_model(files["v"]), load_model(files["epsilon"])
    assert probe_v_prediction(v_model.unet) < V_THRESHOLD < probe_v_prediction(epsilon_model.unet)
    assert v_model.v_prediction is True and "A1111's check" in v_model.prediction.reason
    assert epsilon_model.v_prediction is False and "A1111's check" in epsilon_model.prediction.reason


@pytest.mark.parametrize("seed", range(4))
def test_untrained_sd2_models_stay_epsilon(seed):
    components = build_tiny_components(Family.SD2, seed)
    assert probe_v_prediction(components.unet) > V_THRESHOLD


def test_the_setting_overrides_the_probe_and_says_so(fitted_files):
    _, files = fitted_files
    forced = load_model(files["v"], v_prediction=False)
    assert forced.v_prediction is False and forced.prediction.against_evidence
    agreeing = load_model(files["epsilon"], v_prediction=False)
    assert agreeing.v_prediction is False and not agreeing.prediction.against_evidence


def test_a_yaml_beside_the_file_wins_over_the_probe(fitted_files, tmp_path):
    _, files = fitted_files
    path = tmp_path / "epsilon_declared.safetensors"
    path.write_bytes(files["v"].read_bytes())
    (tmp_path / "epsilon_declared.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    tokenizer = files["v"].with_name("v.tokenizer")
    loaded = load_model(path, tokenizer_dir=tokenizer)
    assert loaded.v_prediction is False and "epsilon_declared.yaml" in loaded.prediction.reason


@pytest.mark.parametrize("kind", ["v", "epsilon"])
def test_the_run_prints_the_objective_and_the_file_records_it(fitted_files, capsys, kind):
    root, files = fitted_files
    code = main([
        "train", "--model", str(files[kind]), "--data", str(root / "images"), "--output-dir", str(root / "out"),
        "--set", "train_iterations=1", "--set", "image_size=64", "--set", "image_buckets_step=64",
        "--set", "image_min_length=64", "--set", "network_rank=2", "--set", f"save_lora_name={kind}_lora",
        "--set", "train_model_precision=fp32", "--set", "train_batch_size=1",
    ])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    expected = "v-prediction" if kind == "v" else "epsilon"
    lines = [line for line in (printed.out + printed.err).splitlines() if "training objective" in line]
    assert len(lines) == 1 and f"training objective {expected}" in lines[0] and "A1111" in lines[0]
    _, meta = load_lora(root / "out" / f"{kind}_lora.safetensors")
    assert meta["ss_v2"] == "True"
    assert meta["ss_v_parameterization"] == str(kind == "v")
    assert meta["modelspec.prediction_type"] == ("v" if kind == "v" else "epsilon")
    assert meta["modelspec.architecture"] == (
        "stable-diffusion-v2-768-v/lora" if kind == "v" else "stable-diffusion-v2-512/lora"
    )


@pytest.mark.parametrize(("text", "value"), [("auto", None), ("", None), (None, None), ("true", True),
                                             (False, False), ("false", False)])
def test_the_setting_takes_auto_true_or_false(text, value):
    assert TrainConfig(model_v_pred=text).model_v_pred is value


def test_a_wrong_setting_is_one_clear_error():
    with pytest.raises(UserError, match="'maybe' is not true, false or auto"):
        TrainConfig(model_v_pred="maybe")
