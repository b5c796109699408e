"""Weight-only 8-bit storage of the frozen model: int8 or fp8 (e4m3) per output channel.

Written by hand because the field's library does not cover what a UNet is made of: torchao 0.18's
`Int8WeightOnlyConfig` / `Float8WeightOnlyConfig` quantize `nn.Linear` only (its tensors raise on
`aten.convolution`), and about 68 % of an SD1.5 UNet's weights sit in `nn.Conv2d` layers, so it
would save about 16 % against fp16 where this saves about 50 %.

A quantized layer stays an `nn.Linear` / `nn.Conv2d` (with the same shapes and `weight` attribute)
so that adapter targeting and hooking see it unchanged. Its `weight` is a buffer of int8 values,
or of fp8 values kept as int8 bytes (`fp8` says which) so that `module.to(dtype)` leaves them alone
and so that transformers' T5 (Flux's text encoder), which casts the input of its `wo` layer to that
layer's weight dtype unless it is int8, does not cast it to bytes; `weight_scale`
(one value per output channel) carries the compute dtype. The layer computes in that dtype with
the integer weight and scales its output, which is exact per output channel; a custom autograd
function keeps only the 8-bit weight for the backward pass (plain autograd would keep a decoded
full-precision copy of every layer until the backward pass, which is the memory we cut), and
passes gradients to the layer's input only: the base model is frozen.
"""

from __future__ import annotations

import enum

import torch
from torch import nn
from torch.nn import functional as F

# Below this many weights the per-channel scale and the decode step cost about what they save.
MIN_QUANTIZED_VALUES = 1024
INT8_MAX = 127.0
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max


class WeightStorage(str, enum.Enum):
    INT8 = "int8"
    FP8 = "fp8"


def encode(weight: torch.Tensor, storage: WeightStorage) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored 8-bit weight, fp32 scale per output channel) with weight ~= stored * scale."""
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    absmax = flat.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    if storage is WeightStorage.INT8:
        scale = absmax / INT8_MAX
        stored = (flat / scale[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    else:
        scale = absmax / FP8_MAX
        stored = (flat / scale[:, None]).to(FP8).view(torch.int8)
    return stored.reshape(weight.shape), scale


def decode(stored: torch.Tensor, dtype: torch.dtype, fp8: bool) -> torch.Tensor:
    """The stored values (not yet scaled) in the compute dtype; exact there for int8 and e4m3."""
    values = stored.view(FP8) if fp8 else stored
    return values.to(dtype)


def _add_bias(out: torch.Tensor, bias: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    return out if bias is None else out.add_(bias.view(shape))


class _WeightOnlyLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, stored, scale, bias, fp8):
        ctx.save_for_backward(stored, scale)
        ctx.fp8 = fp8
        return _add_bias(F.linear(x, decode(stored, scale.dtype, fp8)).mul_(scale), bias, (-1,))

    @staticmethod
    def backward(ctx, grad):
        stored, scale = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        return (grad * scale).matmul(decode(stored, grad.dtype, ctx.fp8)), None, None, None, None


class _WeightOnlyConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, stored, scale, bias, fp8, stride, padding, dilation, groups):
        ctx.save_for_backward(stored, scale)
        ctx.input_shape, ctx.layout, ctx.fp8 = x.shape, (stride, padding, dilation, groups), fp8
        out = F.conv2d(x, decode(stored, scale.dtype, fp8), None, stride, padding, dilation, groups)
        return _add_bias(out.mul_(scale.view(-1, 1, 1)), bias, (-1, 1, 1))

    @staticmethod
    def backward(ctx, grad):
        stored, scale = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            stride, padding, dilation, groups = ctx.layout
            grad_x = torch.nn.grad.conv2d_input(ctx.input_shape, decode(stored, grad.dtype, ctx.fp8),
                                                grad * scale.view(-1, 1, 1), stride, padding, dilation, groups)
        return grad_x, None, None, None, None, None, None, None, None


def _store(layer: nn.Linear | nn.Conv2d, original: nn.Linear | nn.Conv2d, storage: WeightStorage,
           device: torch.device) -> None:
    stored, scale = encode(original.weight.to(device), storage)
    del layer.weight  # the float Parameter (on the meta device) gives way to the 8-bit buffer
    layer.register_buffer("weight", stored)
    layer.register_buffer("weight_scale", scale)
    layer.bias = original.bias
    if layer.bias is not None:
        layer.bias.requires_grad_(False)


class QuantizedLinear(nn.Linear):
    """A frozen Linear with 8-bit weights; see the module docstring."""

    weight_scale: torch.Tensor
    fp8: bool

    @classmethod
    def from_float(cls, layer: nn.Linear, storage: WeightStorage, device: torch.device) -> QuantizedLinear:
        quantized = cls(layer.in_features, layer.out_features, layer.bias is not None, device="meta")
        _store(quantized, layer, storage, device)
        quantized.fp8 = storage is WeightStorage.FP8
        return quantized

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _WeightOnlyLinear.apply(x, self.weight, self.weight_scale, self.bias, self.fp8)


class QuantizedConv2d(nn.Conv2d):
    """A frozen Conv2d with 8-bit weights; see the module docstring."""

    weight_scale: torch.Tensor
    fp8: bool

    @classmethod
    def from_float(cls, layer: nn.Conv2d, storage: WeightStorage, device: torch.device) -> QuantizedConv2d:
        quantized = cls(layer.in_channels, layer.out_channels, layer.kernel_size,  # type: ignore[arg-type]
                        layer.stride, layer.padding, layer.dilation, layer.groups,  # type: ignore[arg-type]
                        layer.bias is not None, device="meta")
        _store(quantized, layer, storage, device)
        quantized.fp8 = storage is WeightStorage.FP8
        return quantized

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _WeightOnlyConv2d.apply(x, self.weight, self.weight_scale, self.bias, self.fp8, self.stride,
                                       self.padding, self.dilation, self.groups)


def _worth_quantizing(layer: nn.Module, convolutions: bool) -> bool:
    if isinstance(layer, (QuantizedLinear, QuantizedConv2d)):
        return False
    if isinstance(layer, nn.Conv2d):
        # padding modes other than zeros pad in a step of their own; "same"/"valid" have no input-gradient helper
        plain = layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
        return convolutions and plain and layer.weight.numel() >= MIN_QUANTIZED_VALUES
    return isinstance(layer, nn.Linear) and layer.weight.numel() >= MIN_QUANTIZED_VALUES


def quantize_layers(model: nn.Module, storage: WeightStorage, device: torch.device, *,
                    convolutions: bool = True) -> int:
    """Replace the model's Linear (and Conv2d) layers by 8-bit ones on `device`, in place; returns how many.

    Each layer is encoded on `device` one at a time, so a model can be quantized onto a GPU that could
    not hold all of it in full precision. The rest of the model stays where it is: move it after.
    """
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not _worth_quantizing(child, convolutions):
                continue
            kind = QuantizedConv2d if isinstance(child, nn.Conv2d) else QuantizedLinear
            quantized = kind.from_float(child, storage, device)  # type: ignore[arg-type]
            quantized.train(child.training)
            setattr(parent, name, quantized)
            replaced += 1
    return replaced


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers: the memory the frozen model holds."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
