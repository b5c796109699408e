"""How long one AdamW step takes over a LoRA's tensors with torch's three implementations: the default
for-loop (a few ops per tensor), foreach (grouped tensors) and fused (one kernel), against each other in
the same run. The trainer steps with the fused one (training/optimizers.py).

    python benchmarks/optimizer_step.py [--threads N] [--full]

The adapter is the benchmarks' (rank 16, every UNet block) on the tiny SD1 model; `--full` on SD1.5's
architecture (random weights). Gradients are random: the step's cost does not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from speed_variants import adapter, full_size_components

from traintrain.models.families import Family
from traintrain.models.tiny import build_tiny_components

IMPLEMENTATIONS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def adapter_parameters(full: bool) -> list[torch.nn.Parameter]:
    components = full_size_components(Family.SD1) if full else build_tiny_components(Family.SD1)
    parameters = list(adapter(components).parameters())
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter)
    return parameters


def milliseconds_per_step(optimizer: torch.optim.Optimizer, steps: int = 50) -> float:
    for _ in range(5):  # the states are created at the first step
        optimizer.step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--full", action="store_true", help="SD1.5's architecture instead of the tiny model")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parameters = adapter_parameters(args.full)
    print(f"{'SD1.5' if args.full else 'tiny'} adapter: {len(parameters)} tensors, "
          f"{sum(p.numel() for p in parameters) / 1e6:.1f} M values; {torch.get_num_threads()} threads")
    times = {name: milliseconds_per_step(torch.optim.AdamW(parameters, lr=1e-4, **settings))
             for name, settings in IMPLEMENTATIONS.items()}
    for name, ms in times.items():
        print(f"  {name:9s} {ms:8.2f} ms   {ms / times['for-loop']:.2f}x the for-loop")


if __name__ == "__main__":
    main()
