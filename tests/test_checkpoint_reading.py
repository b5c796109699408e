"""Reading model files: ComfyUI's scaled fp8 and mixed-precision files read as the weights they stand for."""

import json
import sys

import pytest
import torch
from safetensors.torch import save_file

from traintrain.errors import UserError
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
    assert weight.dtype == torch.bfloat16  # half float32's memory: 8-bit files are read for their small size
    assert (weight.float() - state["model.diffusion_model.a.weight"]).abs().max() <= 0.07 * 0.02 * 4  # fp8's rounding
    raw = (state["model.diffusion_model.a.weight"] / (state["model.diffusion_model.a.weight"].abs().max() / FP8_MAX))
    assert (weight.float() - raw).abs().max() > 1  # the stored values alone are off by the scale
    assert torch.equal(read["vae.conv.weight"], state["vae.conv.weight"])


def test_plain_files_read_unchanged(tmp_path):
    state = {"a.weight": torch.randn(3, 3), "b.scale": torch.ones(2)}
    save_file(state, str(tmp_path / "plain.safetensors"))
    read = read_checkpoint(tmp_path / "plain.safetensors")
    assert set(read) == set(state) and all(torch.equal(read[k], state[k]) for k in state)


def comfy_quant(state: dict[str, torch.Tensor], formats: dict[str, str], group: int = 4,
                in_metadata: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`state` with the layers named in `formats` quantized as ComfyUI's mixed-precision files store them: the
    8-bit weight, its `weight_scale` (one number for fp8, one per row for int8_tensorwise, one per `group` x
    `group` block for int8_blockwise) and the layer's config, as a `<layer>.comfy_quant` tensor of JSON bytes or,
    `in_metadata`, in the file's `_quantization_metadata`. Returns the tensors and the file's metadata."""
    out, layers = dict(state), {}
    for layer, name in formats.items():
        weight = out.pop(layer + ".weight").float()
        config = {"format": name}
        if name == "float8_e4m3fn":
            scale = weight.abs().max() / FP8_MAX
            out[layer + ".weight"] = (weight / scale).to(FP8)
            out[layer + ".input_scale"] = torch.tensor(1.0)
        elif name == "int8_tensorwise":
            scale = weight.abs().amax(dim=1, keepdim=True) / 127
            out[layer + ".weight"] = (weight / scale).round().to(torch.int8)
        elif name == "int8_blockwise":
            rows, columns = weight.shape
            blocks = weight.reshape(rows // group, group, columns // group, group)
            scale = blocks.abs().amax(dim=(1, 3)) / 127
            out[layer + ".weight"] = (blocks / scale[:, None, :, None]).round().to(torch.int8).reshape(rows, columns)
            config["group_size"] = group
        else:  # a 4-bit format: two values packed in each byte
            scale = torch.ones(weight.shape[0], weight.shape[1] // 16)
            out[layer + ".weight"] = torch.zeros(weight.shape[0], weight.shape[1] // 2, dtype=torch.uint8)
        out[layer + ".weight_scale"] = scale
        layers[layer] = config
        if not in_metadata:
            out[layer + ".comfy_quant"] = torch.tensor(list(json.dumps(config).encode()), dtype=torch.uint8)
    metadata = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})} if in_metadata else {}
    return out, metadata


def quantizable_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {f"model.diffusion_model.{name}.weight": torch.randn(8, 16, generator=generator) * 0.02
            for name in ("fp8", "rows", "blocks", "plain")} | {
        "model.diffusion_model.fp8.bias": torch.randn(8, generator=generator)}


@pytest.mark.parametrize("in_metadata", [False, True], ids=["comfy_quant tensors", "_quantization_metadata"])
def test_comfyui_mixed_precision_layers_read_as_the_weights_they_stand_for(tmp_path, in_metadata):
    state = quantizable_state()
    formats = {"model.diffusion_model.fp8": "float8_e4m3fn", "model.diffusion_model.rows": "int8_tensorwise",
               "model.diffusion_model.blocks": "int8_blockwise"}
    tensors, metadata = comfy_quant(state, formats, in_metadata=in_metadata)
    path = tmp_path / "model_fp8mixed.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    read = read_checkpoint(path)
    assert set(read) == set(state)  # no configs, no scales
    for key, expected in state.items():
        got = read[key]
        quantized = key.endswith("weight") and key.split(".")[2] != "plain"
        assert got.dtype == (torch.bfloat16 if quantized else torch.float32), key
        # fp8's 3-bit mantissa: 1/16 of a value; int8: half a step of absmax / 127 (per row or per block), and
        # bfloat16's rounding of the product, 1/512 of it
        bound = (0.07 if key.split(".")[2] == "fp8" else 1 / 254 + 1 / 512) * expected.abs().max() if quantized else 0
        assert (got.float() - expected).abs().max() <= bound, key
    stored = tensors["model.diffusion_model.blocks.weight"].float()
    assert (read["model.diffusion_model.blocks.weight"].float() - stored).abs().max() > 1  # not the stored values


def test_a_comfyui_layer_in_a_format_not_read_is_refused_naming_it(tmp_path):
    tensors, _ = comfy_quant(quantizable_state(), {"model.diffusion_model.rows": "nvfp4"})
    path = tmp_path / "model_nvfp4.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(UserError, match=r"model_nvfp4.safetensors: layer model.diffusion_model.rows is stored in "
                                        r"ComfyUI's 'nvfp4' format, which is not read; give the model's bf16, "
                                        r"fp16 or fp8 file") as error:
        read_checkpoint(path)
    assert error.value.field == "model"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_ckpt_is_read_memory_mapped_and_copy_on_write(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.out.2.weight": torch.ones(64, 64)}}, path)
    state = read_checkpoint(path)
    with open("/proc/self/maps", encoding="utf-8") as maps:
        assert str(path) in maps.read()  # the file's pages, not a copy in the process's own memory
    state["model.diffusion_model.out.2.weight"].mul_(3)  # as a conversion in place would
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["model.diffusion_model.out.2.weight"],
                       torch.ones(64, 64))  # the file is not written


def test_a_ckpt_in_the_legacy_format_cannot_be_mapped_and_is_read_into_memory(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.out.2.weight": torch.ones(4, 4)}}, path,
               _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(path)["model.diffusion_model.out.2.weight"], torch.ones(4, 4))
