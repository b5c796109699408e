"""Memory and step time of an 8-bit frozen model (train_model_precision int8/fp8), as ratios (issue 15).

Reference: the same UNet in the float precision training would otherwise use, bf16 on a GPU and fp32
on the CPU (where 8-bit weights also compute in fp32). Targets: the frozen UNet's parameter and buffer
bytes at least 40 % below fp16, a LoRA step at most 1.3x the reference's.

    python benchmarks/quantized_base.py                     # tiny SD1 and SD1.5's UNet (random weights), 64 px
    python benchmarks/quantized_base.py --quick             # the tiny model only
    python benchmarks/quantized_base.py --size 512 --batch 2

The step is a rank-16 lierla network on every UNet block, MSE, backward and AdamW (run.py's floor
without its data); the variants are timed in turns (one step each per round) and the median kept,
so load from other processes weighs on all of them alike.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from diffusers import UNet2DConditionModel

from traintrain.config import ALL_BLOCK_IDS
from traintrain.models.assembly import config_template
from traintrain.models.families import SPECS, Family
from traintrain.models.quantize import WeightStorage, quantize_layers, tensor_bytes
from traintrain.models.tiny import build_tiny_components
from traintrain.networks.network import AdapterNetwork, NetworkSpec


class _Components:
    """Just what AdapterNetwork needs for a UNet-only benchmark."""

    def __init__(self, unet: UNet2DConditionModel):
        self.unet, self.family, self.spec = unet, Family.SD1, SPECS[Family.SD1]
        self.text_encoders: list[torch.nn.Module] = []


def build_unet(full: bool) -> UNet2DConditionModel:
    torch.manual_seed(0)
    if full:
        return UNet2DConditionModel.from_config(config_template(Family.SD1, "unet"))
    return build_tiny_components(Family.SD1).unet


def frozen(unet: UNet2DConditionModel, storage: WeightStorage | None, device: torch.device,
           dtype: torch.dtype) -> UNet2DConditionModel:
    """A frozen copy as freeze_model makes it: 8-bit layers (when asked), the rest in `dtype`."""
    unet = copy.deepcopy(unet).requires_grad_(False).eval()
    if storage is not None:
        quantize_layers(unet, storage, device)
    return unet.to(device, dtype)


def lora_step(unet: UNet2DConditionModel, device: torch.device, dtype: torch.dtype, args) -> Callable[[], None]:
    network = AdapterNetwork(_Components(unet), NetworkSpec(rank=16, alpha=16, blocks=list(ALL_BLOCK_IDS)))
    network.to(device).apply()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    latent = args.size // 8
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 4, latent, latent, generator=generator).to(device, dtype)
    t = torch.randint(0, 1000, (args.batch,), generator=generator).to(device)
    context = torch.randn(args.batch, 77, unet.config.cross_attention_dim, generator=generator).to(device, dtype)

    def step() -> None:
        out = unet(x, t, encoder_hidden_states=context).sample
        torch.nn.functional.mse_loss(out.float(), x.float()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def median_step_seconds(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(full: bool, device: torch.device, args) -> None:
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    reference_name = "bf16" if compute == torch.bfloat16 else "fp32"
    source = build_unet(full)
    params = sum(p.numel() for p in source.parameters()) / 1e6
    print(f"\n{'SD1.5 UNet' if full else 'tiny SD1 UNet'} ({params:.1f}M params), device {device.type}, "
          f"{args.size}px (latents {args.size // 8}), batch {args.batch}, 8-bit weights compute in {reference_name}")

    fp16_bytes = tensor_bytes(copy.deepcopy(source).half())
    fp32_bytes = tensor_bytes(source)
    variants = {reference_name: frozen(source, None, device, compute)}
    for storage in WeightStorage:
        variants[storage.value] = frozen(source, storage, device, compute)
    del source
    print(f"  frozen UNet bytes: fp32 {fp32_bytes / 2**20:.1f} MiB | fp16 {fp16_bytes / 2**20:.1f} MiB")
    for name, unet in variants.items():
        held = tensor_bytes(unet)
        print(f"    {name:>5}: {held / 2**20:8.1f} MiB = {held / fp16_bytes:.2f}x fp16, {held / fp32_bytes:.2f}x fp32")

    steps = {name: lora_step(unet, device, compute, args) for name, unet in variants.items()}
    seconds = median_step_seconds(steps, args.repeats)
    reference = seconds[reference_name]
    print(f"  LoRA step (median of {args.repeats}):")
    for name, value in seconds.items():
        print(f"    {name:>5}: {value * 1000:8.1f} ms = {value / reference:.2f}x {reference_name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the tiny model only")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (latents are size/8)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    measure(False, device, args)
    if not args.quick:
        measure(True, device, args)


if __name__ == "__main__":
    main()
