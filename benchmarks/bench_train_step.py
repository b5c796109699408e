"""LoRA training-step cost, as a ratio against a reference measured in the same run.

Reference: one inference forward pass of the same frozen UNet on the same batch. A LoRA step
(forward with the adapter, backward into the adapter only, AdamW step) should cost about 2-3
forwards; much more means the adapter or the loop wastes time. Also prints peak GPU memory.

    python benchmarks/bench_train_step.py                    # tiny SD1 on the CPU (seconds)
    python benchmarks/bench_train_step.py --full --size 512  # real SD1.5-size UNet, random weights (GPU)
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import UNet2DConditionModel

from traintrain.config import ALL_BLOCK_IDS
from traintrain.models.assembly import config_template
from traintrain.models.families import Family
from traintrain.models.tiny import build_tiny_components
from traintrain.networks.network import AdapterNetwork, NetworkSpec


class _Components:
    """Just what AdapterNetwork needs for a UNet-only benchmark."""

    def __init__(self, unet, family):
        from traintrain.models.families import SPECS

        self.unet, self.text_encoders, self.spec, self.family = unet, [], SPECS[family], family


def build_unet(full: bool) -> UNet2DConditionModel:
    if full:
        return UNet2DConditionModel.from_config(config_template(Family.SD1, "unet"))
    return build_tiny_components(Family.SD1).unet


def timed(fn, device, repeats):
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="SD1.5-size UNet instead of the tiny one")
    parser.add_argument("--size", type=int, default=128, help="image size in pixels (latents are size/8)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="model precision")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    unet = build_unet(args.full).to(device, dtype).requires_grad_(False)
    if args.checkpointing:
        unet.enable_gradient_checkpointing()
        unet.train()
    spec = NetworkSpec(rank=args.rank, alpha=args.rank, blocks=list(ALL_BLOCK_IDS))
    network = AdapterNetwork(_Components(unet, Family.SD1), spec).to(device).apply()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)

    latent = args.size // 8
    x = torch.randn(args.batch, 4, latent, latent, device=device, dtype=dtype)
    t = torch.randint(0, 1000, (args.batch,), device=device)
    context = torch.randn(args.batch, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)

    def forward_only():
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=context)

    def lora_step():
        out = unet(x, t, encoder_hidden_states=context).sample
        loss = torch.nn.functional.mse_loss(out.float(), x.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reference = timed(forward_only, device, args.repeats)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = timed(lora_step, device, args.repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(
        f"device={device.type} unet={'sd15' if args.full else 'tiny'} ({params:.1f}M params) dtype={dtype_name} "
        f"size={args.size} batch={args.batch} rank={args.rank} modules={len(network.unet_modules)} "
        f"checkpointing={args.checkpointing}"
    )
    print(f"reference forward: {reference * 1000:.1f} ms | LoRA train step: {step * 1000:.1f} ms | "
          f"ratio step/forward: {step / reference:.2f} | peak GPU memory: {peak:.2f} GiB | "
          f"{args.batch / step:.2f} images/s")


if __name__ == "__main__":
    main()
