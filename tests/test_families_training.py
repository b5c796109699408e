"""LoRA training on tiny single-file SD2 (v-prediction) and SDXL models: the right targets and inputs."""

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

import traintrain.modes.denoising as denoising
from sample_images import write_demo_images
from traintrain.config import TrainConfig
from traintrain.jobs.runner import run_job
from traintrain.models.encoding import encode_prompts
from traintrain.models.loading import load_model
from traintrain.models.tiny import write_tiny_model
from traintrain.networks.kohya_format import load_lora

SIZE = 64  # pixels; latents are 8 x 8


def train(root, family, steps=3, **values):
    model = write_tiny_model(family, "single-file", root / f"{family}.safetensors")
    write_demo_images(root / "images")
    config = TrainConfig(
        model=str(model), lora_data_directory=str(root / "images"), network_rank=4, network_alpha=4,
        train_iterations=steps, train_batch_size=2, train_learning_rate=1e-3, image_size=[SIZE, SIZE],
        image_buckets_step=SIZE, image_min_length=SIZE, train_model_precision="fp32", save_precision="fp32",
        train_seed=3, save_lora_name=f"{family}_lora", **values,
    )
    return run_job(config, output_dir=root / "out")


@pytest.fixture
def spy_targets(monkeypatch):
    """Records what the loss compared: (clean latents, noise, timesteps) and the target it was given."""
    calls = {"add_noise": [], "loss": []}
    add_noise = DDPMScheduler.add_noise
    loss = denoising.denoising_loss

    def recording_add_noise(self, original, noise, timesteps):
        calls["add_noise"].append((original.clone(), noise.clone(), timesteps.clone(), self.alphas_cumprod))
        return add_noise(self, original, noise, timesteps)

    def recording_loss(prediction, target, timesteps, alphas_cumprod, **kwargs):
        calls["loss"].append((target.clone(), kwargs["v_prediction"]))
        return loss(prediction, target, timesteps, alphas_cumprod, **kwargs)

    monkeypatch.setattr(DDPMScheduler, "add_noise", recording_add_noise)
    monkeypatch.setattr(denoising, "denoising_loss", recording_loss)
    return calls


def test_sd2_v_prediction_is_detected_and_trains_on_velocity(tmp_path, spy_targets):
    (tmp_path / "sd2.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    result = train(tmp_path, "sd2")
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    assert len(spy_targets["loss"]) == 3
    for (latents, noise, t, alphas), (target, v_prediction) in zip(spy_targets["add_noise"], spy_targets["loss"]):
        a = alphas[t].float().view(-1, 1, 1, 1)
        velocity = a.sqrt() * noise - (1 - a).sqrt() * latents
        assert v_prediction and torch.allclose(target, velocity, atol=1e-5)
        assert not torch.allclose(target, noise, atol=1e-3)
    _, meta = load_lora(result.path)
    assert meta["ss_v2"] == "True" and meta["ss_v_parameterization"] == "True" and meta["ss_base_model_version"] == "sd_v2"


def test_sd2_without_v_config_trains_on_noise(tmp_path, spy_targets):
    train(tmp_path, "sd2", steps=1)
    (_, noise, _, _), (target, v_prediction) = spy_targets["add_noise"][0], spy_targets["loss"][0]
    assert not v_prediction and torch.equal(target, noise)


def test_sd2_loads_penultimate_text_layer_with_attention_upcast(tmp_path):
    from safetensors import safe_open

    model = write_tiny_model("sd2", "single-file", tmp_path / "sd2.safetensors")
    with safe_open(str(model), "pt") as handle:
        file_layers = {k.split(".")[4] for k in handle.keys() if k.startswith("cond_stage_model.model.transformer.resblocks.")}
    components = load_model(model)
    encoder = components.text_encoders[0]
    assert encoder.config.num_hidden_layers == len(file_layers) - 1  # its last layer is the penultimate one
    assert components.unet.config.upcast_attention
    ids = components.tokenizers[0]("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(encode_prompts(components, ["a cat"]).hidden, encoder(ids).last_hidden_state)


def test_sdxl_trains_with_pixel_time_ids_and_saves_kohya_sdxl_keys(tmp_path, spy_targets, monkeypatch):
    seen = []
    forward = UNet2DConditionModel.forward

    def recording_forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        seen.append((sample.shape, kwargs["added_cond_kwargs"]["time_ids"].clone(), encoder_hidden_states.shape))
        return forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", recording_forward)
    result = train(tmp_path, "sdxl")
    assert len(seen) == 3
    for shape, time_ids, hidden in seen:
        assert shape[-2:] == (SIZE // 8, SIZE // 8)
        assert time_ids.tolist() == [[SIZE, SIZE, 0, 0, SIZE, SIZE]] * shape[0]  # pixels, not latent sizes
        assert hidden[-1] == 64 + 96  # both tiny encoders' hidden states, concatenated
    assert all(torch.equal(target, noise) for (_, noise, _, _), (target, _) in zip(spy_targets["add_noise"], spy_targets["loss"]))
    tensors, meta = load_lora(result.path)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert any(k.startswith("lora_te1_text_model_encoder_layers_") for k in tensors)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_") for k in tensors)
    assert any(k.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_") for k in tensors)
    assert not any("down_blocks" in k for k in tensors)


def test_sdxl_conditioning_uses_penultimate_layers_and_pooled_bigg(tmp_path):
    components = load_model(write_tiny_model("sdxl", "single-file", tmp_path / "xl.safetensors"))
    cond = encode_prompts(components, ["a cat"])
    expected = []
    with torch.no_grad():
        for tokenizer, encoder in zip(components.tokenizers, components.text_encoders):
            ids = tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
            out = encoder(ids, output_hidden_states=True)
            expected.append(out.hidden_states[-2])
        assert torch.allclose(cond.hidden, torch.cat(expected, dim=-1))
        assert torch.allclose(cond.pooled, out.text_embeds)


def test_strength_and_resume_in_a_run(tmp_path):
    first = train(tmp_path, "sd1", steps=2, network_type="loha", network_strength=4.0)
    tensors, meta = load_lora(first.path)
    assert meta["ss_network_module"] == "lycoris.kohya" and '"algo": "loha"' in meta["ss_network_args"]
    resumed = train(tmp_path / "again", "sd1", steps=1, network_type="loha", network_resume=str(first.path))
    assert resumed.path.is_file()
