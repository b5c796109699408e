"""The toy-world model: committed as its recipe built it, it follows prompts, the CLI hands it out."""

import json

import pytest
import torch

from traintrain.cli import main
from traintrain.models.loading import load_model
from traintrain.toyworld.evaluate import prompt_following
from traintrain.toyworld.model import (
    RECIPE,
    build_toy_components,
    calibrate_latents,
    encode_pool,
    pictures_tensor,
    read_record,
    replay_fingerprints,
    vae_scenes,
)
from traintrain.toyworld.release import check_files, load_toy_model, toy_model_path

# What the base model must reach on held-out seeds (issue 14: colour at least 90 %); measured with
# the committed files: found 1.0, colour 0.99, shape 0.89, size 0.96. Position (0.32, chance is
# 0.33) is not learned by this recipe yet, so it has no floor here.
MIN_ACCURACY = {"found": 0.95, "colour": 0.9, "shape": 0.75, "size": 0.85}


@pytest.fixture(scope="module")
def toy():
    return load_toy_model()


def test_the_committed_files_are_the_ones_the_recipe_recorded():
    assert check_files() == []
    assert read_record()["recipe"] == json.loads(json.dumps(RECIPE.__dict__))


def test_the_toy_model_follows_its_prompts_on_held_out_seeds(toy):
    found = prompt_following(toy)
    short = {name: (found[name], floor) for name, floor in MIN_ACCURACY.items() if found[name] < floor}
    assert not short, f"below the floor: {short}; all {found}"


def test_its_latents_are_a_quarter_of_the_picture_side(toy):
    assert toy.latent_factor == 4 and toy.family.value == "sd1"


@pytest.mark.parametrize("fmt", ["single-file", "diffusers"])
def test_the_cli_writes_it_in_both_formats_and_they_load_the_same(tmp_path, toy, fmt, capsys):
    out = tmp_path / ("toy.safetensors" if fmt == "single-file" else "toy")
    assert main(["tiny-model", "--toy-world", "--format", fmt, "--out", str(out)]) == 0
    assert "toy-world" in capsys.readouterr().out
    loaded = load_model(str(out))
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    ids = toy.tokenizers[0](["a small red circle on the left"], padding="max_length", max_length=77,
                            return_tensors="pt").input_ids
    assert torch.equal(ids, loaded.tokenizers[0](["a small red circle on the left"], padding="max_length",
                                                 max_length=77, return_tensors="pt").input_ids)
    with torch.no_grad():
        context = toy.text_encoders[0](ids)[0]
        expected = toy.unet(latents, 500, encoder_hidden_states=context).sample
        got = loaded.unet(latents, 500, encoder_hidden_states=loaded.text_encoders[0](ids)[0]).sample
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if fmt == "single-file":
        assert out.read_bytes() == toy_model_path().read_bytes()


def test_the_toy_world_is_sd1_only(tmp_path, capsys):
    assert main(["tiny-model", "--toy-world", "--family", "sdxl", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "sd1" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()


@pytest.mark.slow
def test_the_build_script_still_does_what_built_the_committed_files(toy):
    """Replays the first steps of both stages (the UNet stage on the committed VAE): a change to the
    recipe's code or defaults shows here, without the minutes of a whole build (the VAE's calibration,
    which encodes the whole picture pool, is checked by the test below on a few pictures)."""
    recorded = read_record()["fingerprints"]
    replayed = replay_fingerprints(RECIPE, vae=toy.vae)
    for name, value in recorded.items():
        assert replayed[name] == pytest.approx(value, rel=1e-4), name


def test_calibration_gives_the_latents_sd1s_spread_and_a_point_posterior():
    torch.manual_seed(0)
    vae = build_toy_components().vae.eval()
    pictures = pictures_tensor(vae_scenes()[:24], RECIPE.picture_size)
    calibrate_latents(vae, pictures)
    latents = encode_pool(vae, pictures)  # the posterior's means, scaled by the family's factor
    assert latents.std().item() == pytest.approx(1.0, rel=1e-3)
    with torch.no_grad():
        posterior = vae.encode(pictures[:4]).latent_dist
    assert posterior.std.max().item() < 0.01
