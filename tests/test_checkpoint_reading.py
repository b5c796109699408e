"""Reading model files: ComfyUI's scaled fp8 files read as the weights they stand for."""

import torch
from safetensors.torch import save_file

from traintrain.models.checkpoint_reading import read_checkpoint

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max


def scaled_fp8(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """`state` saved as ComfyUI's scaled fp8 files are: every matrix under `prefix` in fp8 with its scalar
    scale (absmax / fp8's largest value) and an input scale, plus the `scaled_fp8` marker."""
    out = {"scaled_fp8": torch.empty(0, dtype=FP8)}
    for key, value in state.items():
        if key.startswith(prefix) and key.endswith(".weight") and value.ndim == 2:
            scale = value.abs().max().float() / FP8_MAX
            stem = key.removesuffix("weight")
            out[key] = (value / scale).to(FP8)
            out[stem + "scale_weight"], out[stem + "scale_input"] = scale, torch.tensor(1.0)
        else:
            out[key] = value
    return out


def test_scaled_fp8_weights_are_read_times_their_scales(tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = {"model.diffusion_model.a.weight": torch.randn(8, 16, generator=generator) * 0.02,
             "model.diffusion_model.a.bias": torch.randn(8, generator=generator),
             "vae.conv.weight": torch.randn(4, 4, 3, 3, generator=generator)}
    path = tmp_path / "model_fp8_scaled.safetensors"
    save_file(scaled_fp8(state, "model.diffusion_model."), str(path))
    read = read_checkpoint(path)
    assert set(read) == set(state)  # no marker, no scales
    weight = read["model.diffusion_model.a.weight"]
    assert weight.dtype == torch.float32
    assert (weight - state["model.diffusion_model.a.weight"]).abs().max() <= 0.07 * 0.02 * 4  # fp8's rounding
    raw = (state["model.diffusion_model.a.weight"] / (state["model.diffusion_model.a.weight"].abs().max() / FP8_MAX))
    assert (weight - raw).abs().max() > 1  # the stored values alone are off by the scale
    assert torch.equal(read["vae.conv.weight"], state["vae.conv.weight"])


def test_plain_files_read_unchanged(tmp_path):
    state = {"a.weight": torch.randn(3, 3), "b.scale": torch.ones(2)}
    save_file(state, str(tmp_path / "plain.safetensors"))
    read = read_checkpoint(tmp_path / "plain.safetensors")
    assert set(read) == set(state) and all(torch.equal(read[k], state[k]) for k in state)
