"""Pre-flight estimate of a run's peak memory and seconds per step, before the first step.

Not a table of rules of thumb: the job's own denoiser architecture (the UNet, or the Flux, SD3 or Z-Image
transformer) is rebuilt on PyTorch's meta device (shapes without data, so it costs no memory and a few
seconds even at SDXL or Flux size), the adapter is applied to it, and one training step at the run's batch, resolution
and precision is traced:
the tensors autograd keeps for the backward pass are the activation memory, and
`torch.utils.flop_counter` gives the step's floating-point operations. Attention is counted as the
fused kernels (flash / memory-efficient SDPA) run it on a GPU and on a recent CPU: without the
B x heads x N x N weights. Weights are the frozen model's real bytes as loaded (without T5 or
Z-Image's Qwen3, which wait on the CPU while training: models/encoder_offload.py); the network adds
its weights, gradients and the optimizer's states.

Seconds per step = FLOPs / the device's measured matmul rate / an efficiency, plus a per-layer
launch cost; both constants are calibrated against measured steps (README, "Performance").
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from traintrain.choices import Optimizer
from traintrain.models.encoder_offload import offloaded_encoder
from traintrain.models.families import Family
from traintrain.models.tokenizers import MAX_LENGTH
from traintrain.training.events import Message, Reporter

GIB = 2**30
# Share of the device's dense matmul rate a UNet training step reaches (convolutions, norms and
# attention run below it), and launch + Python cost per layer (UNet leaf modules and adapter modules)
# per step, forward and backward. CPU: the tiny model's 0.19 s steps at 64 px batch 2 (485 UNet
# layers + 130 adapters), nearly all that cost, and its 1.67 s steps at 256 px batch 4, nearly all
# compute (2 cores, 512x512 fp32 matmul rate); GPU: not calibrated (no GPU lent).
EFFICIENCY = {"cuda": 0.45, "cpu": 0.18}
LAYER_OVERHEAD_S = {"cuda": 60e-6, "cpu": 300e-6}
# Optimizer states per trained value, in bytes (AdamW: two fp32 moments).
STATE_BYTES = {Optimizer.SGD_NESTEROV: 4, Optimizer.LION: 4, Optimizer.ADAMW8BIT: 2, Optimizer.ADAM8BIT: 2,
               Optimizer.LION8BIT: 1, Optimizer.PAGED_ADAMW8BIT: 2, Optimizer.SGD_NESTEROV8BIT: 1,
               Optimizer.PAGED_LION8BIT: 1, Optimizer.ADAFACTOR: 1, Optimizer.PRODIGY: 16}
DEFAULT_STATE_BYTES = 8
WORKSPACE_SHARE = 0.10  # allocator fragmentation and kernel workspaces, on top of what is traced


@dataclass(frozen=True)
class Estimate:
    weights: int  # frozen model on the device, bytes
    network: int  # adapter weights, gradients and optimizer states
    activations: int  # kept for the backward pass at the peak
    flops: float  # one optimizer step
    seconds_per_step: float
    device: str

    @property
    def peak(self) -> int:
        return int((self.weights + self.network + self.activations) * (1 + WORKSPACE_SHARE))

    def describe(self) -> str:
        return (f"estimate: peak {self.peak / GIB:.2f} GiB on the {self.device} (model {self.weights / GIB:.2f}, "
                f"network and optimizer {self.network / GIB:.2f}, activations {self.activations / GIB:.2f}); "
                f"about {self.seconds_per_step:.2f} s a step ({self.flops / 1e12:.2f} TFLOP)")


def estimate_run(components, spec, config, device: torch.device, model_dtype: torch.dtype,
                 lora_dtype: torch.dtype, frozen_passes: int = 0, processes: int = 1, seconds: bool = True) -> Estimate:
    """The estimate for `components` as loaded (already frozen and moved) and the run's settings.

    `frozen_passes`: extra no-grad denoiser passes a step makes (iLECO's and ADDifT's targets);
    `processes`: data-parallel processes, each running the denoiser on its share of the batch;
    `seconds=False`: memory only (NaN seconds), without measuring the device (which may be absent)."""
    batch = max(1, config.train_batch_size // processes)
    height, width = (side // components.latent_factor for side in config.image_size[:2])
    denoiser, network_values, layers = _meta_denoiser(components, spec, model_dtype,
                                                      config.use_gradient_checkpointing)
    inputs = _meta_inputs(components, denoiser, batch, height, width, model_dtype)
    activations, forward_flops, backward_flops = _trace_step(denoiser, inputs)
    offloaded = offloaded_encoder(components)  # on the CPU while training (models/encoder_offload.py)
    weights = sum(_bytes(part) for part in (components.denoiser, components.vae, *components.text_encoders)
                  if part is not offloaded)
    state = STATE_BYTES.get(config.train_optimizer, DEFAULT_STATE_BYTES)
    network = network_values * (2 * torch.finfo(lora_dtype).bits // 8 + state)
    flops = (forward_flops * (1 + frozen_passes) + backward_flops) * config.gradient_accumulation_steps
    step = float("nan")
    if seconds:
        step = flops / (matmul_rate(device) * EFFICIENCY.get(device.type, 0.18))
        step += layers * LAYER_OVERHEAD_S.get(device.type, 150e-6) * config.gradient_accumulation_steps
    return Estimate(weights, network, activations, flops, step, _device_name(device) if seconds else device.type)


def report_estimate(estimate: Estimate, device: torch.device, report: Reporter) -> None:
    """The estimate, and a warning when it will not fit the device's free memory."""
    report(Message(estimate.describe()))
    free = free_memory(device)
    if free is not None and estimate.peak > free:
        spill = (" On Windows the driver then moves memory to shared system RAM without an error and training "
                 "runs about 10x slower.") if device.type == "cuda" else ""
        report(Message(
            f"the run needs about {estimate.peak / GIB:.1f} GiB but the {estimate.device} has {free / GIB:.1f} GiB "
            "free: lower train_batch_size or image_size, turn on use_gradient_checkpointing, or set "
            f"train_model_precision to bf16/fp16 or int8.{spill}", "warning"))


def free_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as info:
            fields = dict(line.split(":", 1) for line in info)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def matmul_rate(device: torch.device) -> float:
    """FLOP/s of a large matmul in the training precision (bf16 on a GPU, fp32 on the CPU), measured."""
    size, dtype = (4096, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    a @ a  # warm-up
    repeats = 10
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    _synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def _bytes(module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


class _MetaComponents:
    """What AdapterNetwork reads of a model: its denoiser (on the meta device), family and spec."""

    def __init__(self, denoiser, components):
        self.denoiser, self.text_encoders, self.spec, self.family = denoiser, [], components.spec, components.family
        self.unet = self.transformer = denoiser  # the name AdapterNetwork uses for the family


def _meta_denoiser(components, spec, dtype: torch.dtype, checkpointing: bool):
    """The job's denoiser architecture (UNet or transformer, its class and config) with the adapter
    applied, on the meta device; the adapter's trained values (text-encoder modules counted from the real
    encoders) and its number of layers."""
    from traintrain.networks.network import AdapterNetwork
    from traintrain.networks.targeting import text_encoder_targets

    with torch.device("meta"):
        denoiser = type(components.denoiser).from_config(components.denoiser.config).to(dtype)
        network = AdapterNetwork(_MetaComponents(denoiser, components), spec).apply()
    denoiser.requires_grad_(False)
    values = sum(p.numel() for p in network.parameters())
    layers = len(network.unet_modules) + sum(1 for module in denoiser.modules() if not list(module.children()))
    if spec.trains_text_encoder:  # CLIP encoders only: T5 and Qwen3 have no target layers
        for encoder in components.text_encoders:
            for target in text_encoder_targets(encoder, "te"):  # the name does not change the count
                weight: torch.Tensor = target.module.weight  # type: ignore[assignment]  # a Linear's (out, in)
                values += spec.rank * sum(weight.shape)
                layers += 1
    if checkpointing:
        denoiser.enable_gradient_checkpointing()
        denoiser.train()
    return denoiser, values, layers


def _meta_inputs(components, denoiser, batch: int, height: int, width: int, dtype: torch.dtype) -> dict:
    """The denoiser's keyword inputs for one training step (modes/denoising.py's unet_predict, or
    modes/flow_matching.py's transformer_predict) on the meta device."""
    config = denoiser.config

    def empty(*shape: int, kind: torch.dtype = dtype) -> torch.Tensor:
        return torch.empty(*shape, device="meta", dtype=kind)

    if components.family is Family.FLUX:
        from traintrain.models.flux_text import t5_length

        tokens, text = (height // 2) * (width // 2), t5_length(components.tokenizers[1])
        return {
            "hidden_states": empty(batch, tokens, config.in_channels), "timestep": empty(batch),
            "guidance": empty(batch, kind=torch.float32) if config.guidance_embeds else None,
            "pooled_projections": empty(batch, config.pooled_projection_dim),
            "encoder_hidden_states": empty(batch, text, config.joint_attention_dim),
            "txt_ids": empty(text, 3), "img_ids": empty(tokens, 3),
        }
    if components.family is Family.SD3:  # CLIP's 77 tokens, then T5's (or 77 zeros without T5)
        from traintrain.models.sd3_text import t5_length

        text = MAX_LENGTH + (t5_length(components.tokenizers[2]) if len(components.tokenizers) > 2 else MAX_LENGTH)
        return {
            "hidden_states": empty(batch, config.in_channels, height, width), "timestep": empty(batch),
            "encoder_hidden_states": empty(batch, text, config.joint_attention_dim),
            "pooled_projections": empty(batch, config.pooled_projection_dim),
        }
    if components.family is Family.ZIMAGE:  # a prompt at the padded length: its real tokens are at most that
        from traintrain.models.zimage_text import sequence_length

        text = sequence_length(components.tokenizers[0])
        return {
            "x": [empty(config.in_channels, 1, height, width) for _ in range(batch)], "t": empty(batch),
            "cap_feats": [empty(text, config.cap_feat_dim) for _ in range(batch)],
        }
    inputs: dict = {
        "sample": empty(batch, config.in_channels, height, width),
        "timestep": empty(batch, kind=torch.long),
        "encoder_hidden_states": empty(batch, MAX_LENGTH, config.cross_attention_dim),
    }
    if components.family == Family.SDXL:
        inputs["added_cond_kwargs"] = {"text_embeds": empty(batch, 1280), "time_ids": empty(batch, 6)}
    return inputs


def _trace_step(denoiser, inputs: dict) -> tuple[int, float, float]:
    """Bytes kept for backward (each storage once; weights, which backward keeps too, are counted as
    weights), forward FLOPs and backward FLOPs of one step."""
    from torch.utils.flop_counter import FlopCounterMode

    kept: dict[int, int] = {}
    weights = {t.untyped_storage()._cdata for module in _hooked_modules(denoiser)
               for t in (*module.parameters(), *module.buffers())}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in weights:
            kept[storage._cdata] = storage.nbytes()
        return tensor

    with _fused_attention(), FlopCounterMode(display=False) as counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            output = denoiser(**inputs).sample
        if isinstance(output, list):  # Z-Image: one latent per sample
            output = torch.stack(output)
        forward = counter.get_total_flops()
        output.float().square().mean().backward()
        total = counter.get_total_flops()
    return sum(kept.values()), float(forward), float(total - forward)


def _hooked_modules(denoiser) -> list:
    """The denoiser and the adapter modules hooked into its layers (kept outside its module tree)."""
    adapters = [getattr(layer.forward, "__self__", None) for layer in denoiser.modules()]
    return [denoiser, *(a for a in adapters if isinstance(a, torch.nn.Module) and a is not None)]


class _FusedAttention(torch.autograd.Function):
    """SDPA as the fused kernels keep it for backward: q, k, v, the output and one float per row."""

    @staticmethod
    def forward(ctx, query, key, value, original):
        output = original(query, key, value)
        row_stats = torch.empty(query.shape[:-1], device=query.device, dtype=torch.float32)
        ctx.save_for_backward(query, key, value, output, row_stats)
        ctx.original = original
        return output

    @staticmethod
    def backward(ctx, grad):
        query, key, value, _, _ = ctx.saved_tensors
        with torch.enable_grad():
            q, k, v = (t.detach().requires_grad_() for t in (query, key, value))
            output = ctx.original(q, k, v)
        return (*torch.autograd.grad(output, (q, k, v), grad), None)


@contextmanager
def _fused_attention():
    original = F.scaled_dot_product_attention

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        plain = lambda q, k, v: original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,  # noqa: E731
                                         is_causal=is_causal, **kwargs)
        if not torch.is_grad_enabled():
            return plain(query, key, value)
        return _FusedAttention.apply(query, key, value, plain)

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
