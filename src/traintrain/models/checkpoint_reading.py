"""Reading the tensors of a model file: safetensors or a pickled checkpoint, safely and in one clear error.

Every family's single-file loader reads through here, and so does the pre-flight's header check: a
truncated file, a pickle that would run code or a file that is no checkpoint at all each give one
UserError at the model field instead of a traceback.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from traintrain.errors import UserError

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth")
FLOAT8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# What 8-bit weights read as: bfloat16 holds every fp8 value exactly, and a weight times its scale within
# 1/512, far inside the 8-bit rounding, at half float32's memory (a Flux.1 fp8 file would need 48 GB of
# RAM in float32, twice its bf16 file); the loader then casts to the run's precision.
READ_DTYPE = torch.bfloat16


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` or `.ckpt` file (unwrapping Lightning's `state_dict`)."""
    metadata: dict[str, str] = {}
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                # one tensor at a time, each fp8 one upcast as it is read: no fp8 copy of the model stays
                state = {key: _upcast_float8(handle.get_tensor(key)) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as error:
            raise _corrupt_safetensors(path, error) from error
    else:
        # memory-mapped (copy-on-write): the weights stay the file's pages until the model converts or moves
        # them, instead of a second full copy in the process's own memory
        state = {key: _upcast_float8(value) for key, value in torch_load(path, mmap=True).items()}
    return mixed_precision_read(path, dequantized(state), metadata)


SCALED_FP8_MARKER = "scaled_fp8"
SCALE_SUFFIXES = (".scale_weight", ".scale_input")


def dequantized(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's scaled fp8 files (`*_fp8_scaled.safetensors`: a `scaled_fp8` marker, fp8 weights each with a
    `scale_weight`, and `scale_input` for fp8 matmuls) read as the weights they stand for: each weight times its
    scale, in READ_DTYPE; the marker and the scales are dropped. Without this the scales would be taken for layers
    and every weight would be off by its scale. `state` is changed in place (no second copy of a model)."""
    if SCALED_FP8_MARKER not in state and not any(key.endswith(".scale_weight") for key in state):
        return state
    state.pop(SCALED_FP8_MARKER, None)
    scales = {key: state.pop(key) for key in list(state) if key.endswith(SCALE_SUFFIXES)}
    for key, value in state.items():  # fp8 values arrive upcast, exactly: scaling them is as scaling the fp8
        scale = scales.get(key.removesuffix("weight") + "scale_weight") if key.endswith(".weight") else None
        if scale is not None:
            state[key] = (value.float() * scale.float()).to(READ_DTYPE)
    return state


COMFY_QUANT = ".comfy_quant"
QUANT_METADATA = "_quantization_metadata"
WEIGHT_SCALE, INPUT_SCALE = ".weight_scale", ".input_scale"
READ_FORMATS = ("float8_e4m3fn", "float8_e5m2", "int8_tensorwise", "int8_blockwise")


def mixed_precision_read(path: Path, state: dict[str, torch.Tensor],
                         metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """ComfyUI's mixed-precision files (`*_fp8mixed`, int8 conversions): the layers named by a `<layer>.comfy_quant`
    tensor of JSON bytes, or by the file's `_quantization_metadata`, hold 8-bit weights with a `weight_scale`
    (one number, one per row, or one per block of int8_blockwise's group size) and an `input_scale` for 8-bit
    matmuls. Each reads as weight times its scale, in READ_DTYPE; configs and scales are dropped. A layer in a format
    whose values are packed differently (nvfp4, mxfp8, convrot) is refused, naming it. `state` is changed in
    place."""
    layers = _quantized_layers(path, state, metadata)
    if not layers:
        return state
    _check_formats(path, layers)
    for layer in layers:
        state.pop(layer + COMFY_QUANT, None)
        scale, _ = state.pop(layer + WEIGHT_SCALE, None), state.pop(layer + INPUT_SCALE, None)
        if layer + ".weight" in state:
            state[layer + ".weight"] = _times_scale(path, layer, state[layer + ".weight"].float(), scale).to(READ_DTYPE)
    return state


def _quantized_layers(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, dict]:
    """Layer name -> its quantization config, from the file's metadata and its `.comfy_quant` tensors."""
    try:
        layers = dict(json.loads(metadata[QUANT_METADATA]).get("layers", {})) if QUANT_METADATA in metadata else {}
        for key, value in state.items():
            if key.endswith(COMFY_QUANT):
                layers[key.removesuffix(COMFY_QUANT)] = json.loads(bytes(value.flatten().tolist()).decode())
    except (ValueError, AttributeError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path}: unreadable ComfyUI quantization config ({first_line(error)}); "
                        "export the file again or give its bf16 / fp16 version", field="model") from error
    return layers


def check_quantized_layers(path: Path) -> None:
    """The pre-flight's part of `mixed_precision_read`, from a safetensors file's metadata and configs alone:
    a layer in a format that is not read is refused before anything loads."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            configs = {key: handle.get_tensor(key) for key in handle.keys() if key.endswith(COMFY_QUANT)}
    except (SafetensorError, OSError, ValueError) as error:
        raise _corrupt_safetensors(path, error) from error
    _check_formats(path, _quantized_layers(path, configs, metadata))


def _check_formats(path: Path, layers: dict[str, dict]) -> None:
    for layer, config in layers.items():
        name = config.get("format") if isinstance(config, dict) else None
        if name not in READ_FORMATS:
            raise UserError(
                f"{path}: layer {layer} is stored in ComfyUI's '{name}' format, which is not read; "
                "give the model's bf16, fp16 or fp8 file", field="model",
            )


def _times_scale(path: Path, layer: str, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The weight times its scale: one number, one per output row, or one per block of the matrix."""
    if scale is None:
        return weight
    scale = scale.float()
    if scale.numel() == 1:
        return weight * scale.reshape(())
    if scale.numel() == weight.shape[0] == scale.shape[0]:  # (rows,) or (rows, 1)
        return weight * scale.reshape(-1, *[1] * (weight.ndim - 1))
    if weight.ndim == 2 and scale.ndim == 2:
        rows, columns = (-(-size // blocks) for size, blocks in zip(weight.shape, scale.shape, strict=True))
        expanded = scale.repeat_interleave(rows, 0).repeat_interleave(columns, 1)
        if expanded.shape[0] >= weight.shape[0] and expanded.shape[1] >= weight.shape[1]:
            return weight * expanded[: weight.shape[0], : weight.shape[1]]
    raise UserError(f"{path}: layer {layer}'s weight_scale {tuple(scale.shape)} does not fit its weight "
                    f"{tuple(weight.shape)}; export the file again or give its bf16 / fp16 version", field="model")


def _upcast_float8(tensor: torch.Tensor) -> torch.Tensor:
    """fp8-stored checkpoints (common for SDXL) hold only storage values: no layer computes in them."""
    return tensor.to(READ_DTYPE) if tensor.dtype in FLOAT8_DTYPES else tensor


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """safetensors checks on opening that the header is whole and the file covers every tensor."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise _corrupt_safetensors(path, error) from error


def _corrupt_safetensors(path: Path, error: BaseException) -> UserError:
    return UserError(
        f"{path}: truncated or corrupt safetensors file ({first_line(error)}); download or export it again",
        field="model",
    )


def torch_load(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a pickled checkpoint, read with weights_only: a pickle that would run code is refused."""
    if path.suffix.lower() not in TORCH_SUFFIXES:
        raise UserError(
            f"{path}: unsupported model file type '{path.suffix}'; "
            "give a .safetensors or .ckpt file, or a diffusers folder",
            field="model",
        )
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise UserError(
                f"{path}: truncated or corrupt checkpoint ({first_line(error)}); download it again", field="model"
            ) from error
        raise UserError(
            f"{path}: this .ckpt holds Python objects that need unsafe pickle loading; "
            "use a .safetensors version of the model (or convert it with a tool you trust)",
            field="model",
        ) from error
    except RuntimeError as error:
        if mmap and "mmap" in str(error):  # the legacy (pre-zip) format cannot be memory-mapped
            return torch_load(path)
        raise UserError(
            f"{path}: truncated or corrupt checkpoint ({first_line(error)}); download it again", field="model"
        ) from error
    except (EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise UserError(
            f"{path}: truncated or corrupt checkpoint ({first_line(error)}); download it again", field="model"
        ) from error
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise UserError(
            f"{path}: not a model checkpoint (no state dict inside); give a Stable Diffusion .ckpt", field="model"
        )
    return dict(_tensors(data))


def _tensors(data: dict, prefix: str = ""):
    """(key, tensor) pairs, nested dicts flattened (`string_to_param.*` shows an embedding for what it is)."""
    for key, value in data.items():
        if isinstance(value, torch.Tensor):
            yield prefix + str(key), value
        elif isinstance(value, dict):
            yield from _tensors(value, f"{prefix}{key}.")


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]
