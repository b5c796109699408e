"""8-bit frozen model (train_model_precision int8/fp8): close outputs, exact input gradients, about half
of fp16's memory, a LoRA trained and previewed on it, and float-only fields refusing 8 bits."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from helpers import tiny_components, unet_inputs
from job_helpers import tiny_job
from traintrain.config import ModelPrecision, TrainConfig
from traintrain.errors import UserError
from traintrain.jobs.runner import run_job
from traintrain.models.quantize import (
    QuantizedConv2d,
    QuantizedLinear,
    WeightStorage,
    decode,
    quantize_layers,
    tensor_bytes,
)
from traintrain.networks.kohya_format import load_lora
from traintrain.training.events import Message
from traintrain.training.runtime import freeze_model

CPU = torch.device("cpu")
# Relative output error of one layer: int8 rounds to 1/254 of a channel's range, e4m3 to 3 mantissa bits.
LAYER_TOLERANCE = {WeightStorage.INT8: 0.02, WeightStorage.FP8: 0.05}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def quantized(layer: nn.Module, storage: WeightStorage) -> nn.Module:
    holder = nn.Sequential(copy.deepcopy(layer))
    quantize_layers(holder, storage, CPU)
    return holder[0]


@pytest.mark.parametrize("storage", list(WeightStorage))
def test_linear_and_conv_outputs_stay_close(storage):
    torch.manual_seed(0)
    x_linear, x_conv = torch.randn(8, 77, 256), torch.randn(2, 64, 16, 16)
    for layer, x, kind in [(nn.Linear(256, 320), x_linear, QuantizedLinear),
                           (nn.Conv2d(64, 96, 3, padding=1, stride=2), x_conv, QuantizedConv2d)]:
        eight_bit = quantized(layer, storage)
        assert type(eight_bit) is kind and isinstance(eight_bit, type(layer))  # adapters still find it
        assert eight_bit.weight.element_size() == 1 and eight_bit.weight.shape == layer.weight.shape
        with torch.no_grad():
            assert relative_error(eight_bit(x), layer(x)) < LAYER_TOLERANCE[storage]


@pytest.mark.parametrize("storage", list(WeightStorage))
def test_input_gradients_are_those_of_the_decoded_weights(storage):
    """The custom backward keeps only the 8-bit weight yet gives autograd's gradient of the decoded layer."""
    torch.manual_seed(1)
    for layer, shape in [(nn.Linear(64, 48), (4, 5, 64)), (nn.Conv2d(16, 24, 3, padding=2, dilation=2), (2, 16, 9, 9))]:
        eight_bit = quantized(layer, storage)
        per_channel = eight_bit.weight_scale.view(-1, *[1] * (layer.weight.dim() - 1))
        weight = decode(eight_bit.weight, torch.float32, eight_bit.fp8) * per_channel
        x = torch.randn(shape, requires_grad=True)
        reference_x = x.detach().clone().requires_grad_(True)
        if isinstance(layer, nn.Conv2d):
            reference = F.conv2d(reference_x, weight, layer.bias, layer.stride, layer.padding, layer.dilation)
        else:
            reference = F.linear(reference_x, weight, layer.bias)
        out = eight_bit(x)
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
        upstream = torch.randn_like(out)
        (out * upstream).sum().backward()
        (reference * upstream).sum().backward()
        torch.testing.assert_close(x.grad, reference_x.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("storage", list(WeightStorage))
def test_frozen_unet_holds_at_least_40_percent_less_than_fp16(storage):
    """Compared as a GPU holds them: fp16 against 8-bit weights computing in bf16."""
    components = tiny_components()
    fp16_bytes = tensor_bytes(copy.deepcopy(components.unet).half())
    freeze_model(components, CPU, torch.bfloat16, False, torch.float32, weights=ModelPrecision(storage.value))
    assert tensor_bytes(components.unet) <= 0.6 * fp16_bytes
    assert components.unet.dtype == torch.bfloat16  # what pipelines and the loop cast inputs to
    assert components.vae.dtype == torch.float32  # the VAE keeps its own precision
    assert any(isinstance(m, QuantizedLinear) for m in components.text_encoders[0].modules())


def test_quantized_unet_output_stays_close():
    components = tiny_components()
    latents, timesteps, hidden = unet_inputs(components)
    with torch.no_grad():
        want = components.unet(latents, timesteps, hidden).sample
        quantize_layers(components.unet, WeightStorage.INT8, CPU)
        assert relative_error(components.unet(latents, timesteps, hidden).sample, want) < 0.03


def test_lora_trains_on_an_int8_model_and_saves_the_usual_file(tmp_path, monkeypatch):
    from traintrain.jobs import runner

    held = {}
    freeze = runner.freeze_model

    def capture(components, *args, **kwargs):
        freeze(components, *args, **kwargs)
        held["quantized"] = sum(isinstance(m, (QuantizedLinear, QuantizedConv2d)) for m in components.unet.modules())

    monkeypatch.setattr(runner, "freeze_model", capture)
    config = tiny_job(tmp_path, train_model_precision="int8", save_precision="fp16", train_iterations=3,
                      preview_prompts="tt, a red circle", preview_sampling_steps=2)
    events = []
    result = run_job(config, output_dir=tmp_path / "out", report=events.append)
    assert held["quantized"] > 0, "run_job must pass weights=config.train_model_precision to freeze_model"
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    tensors, metadata = load_lora(result.path)
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert all(torch.isfinite(t.float()).all() for t in tensors.values())
    assert any(t.abs().sum() > 0 for key, t in tensors.items() if key.endswith("lora_up.weight"))  # it learned
    assert metadata["ss_mixed_precision"] == "int8"
    assert result.outcome.preview is not None and result.outcome.preview.exists()
    assert any(isinstance(e, Message) and "8-bit weights" in e.text for e in events)


@pytest.mark.parametrize("field", ["save_precision", "train_lora_precision", "train_vae_precision"])
@pytest.mark.parametrize("value", ["int8", "FP8"])
def test_float_only_fields_refuse_8_bits_and_say_where_they_belong(field, value):
    with pytest.raises(UserError) as caught:
        TrainConfig(model="m.safetensors", **{field: value})
    assert caught.value.field == field
    assert "train_model_precision" in caught.value.fix and "fp32, bf16 or fp16" in caught.value.fix


def test_model_precision_offers_8_bits_to_the_form():
    from traintrain.ui.fields import field_specs

    choices = {spec.name: spec.choices for spec in field_specs()}
    assert {"int8", "fp8"} <= set(choices["train_model_precision"])
    assert "int8" not in choices["save_precision"] and "int8" not in choices["train_lora_precision"]
