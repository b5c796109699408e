"""VRAM guidance per family from the pre-flight estimate (training/estimate.py), on the meta device.

    python benchmarks/vram_guide.py            # the table in the README's performance section
    python benchmarks/vram_guide.py --json

Each row builds the family's real architecture (UNet, VAE, text encoders) with no memory behind it,
freezes it in the row's precision (int8 rows store the UNet's and text encoders' layers in 8 bits as
`train_model_precision=int8` does) and traces one LoRA step (rank 16, AdamW, bf16 adapter) at the
row's resolution, batch and checkpointing. What it prints is the estimate a run prints before its
first step: peak memory = frozen weights + adapter with gradients and optimizer states + activations
kept for the backward pass, plus 10 % for the allocator. The trace's activations were checked against
a real step on the CPU (within 4 %, tests/test_estimate.py); on a GPU this is not yet measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_variants import full_size_components  # noqa: E402

from traintrain.choices import ModelPrecision  # noqa: E402
from traintrain.config import TrainConfig  # noqa: E402
from traintrain.models.families import Family  # noqa: E402
from traintrain.networks.network import NetworkSpec  # noqa: E402
from traintrain.training.estimate import GIB, estimate_run  # noqa: E402
from traintrain.training.runtime import freeze_model  # noqa: E402

GPU = torch.device("cuda")  # the estimate's device; only its seconds would ask it for a figure


@dataclass(frozen=True)
class Row:
    family: Family
    pixels: int
    batch: int
    checkpointing: bool
    precision: ModelPrecision


ROWS = [
    Row(Family.SD1, 512, 1, False, ModelPrecision.BF16),
    Row(Family.SD1, 512, 4, False, ModelPrecision.BF16),
    Row(Family.SD1, 512, 4, True, ModelPrecision.BF16),
    Row(Family.SD1, 512, 1, False, ModelPrecision.INT8),
    Row(Family.SD2, 768, 1, False, ModelPrecision.BF16),
    Row(Family.SD2, 768, 1, True, ModelPrecision.BF16),
    Row(Family.SDXL, 1024, 1, False, ModelPrecision.BF16),
    Row(Family.SDXL, 1024, 1, True, ModelPrecision.BF16),
    Row(Family.SDXL, 1024, 1, True, ModelPrecision.INT8),
    Row(Family.SDXL, 1024, 4, True, ModelPrecision.BF16),
]


def estimate_row(row: Row) -> dict:
    config = TrainConfig(image_size=[row.pixels, row.pixels], train_batch_size=row.batch, network_rank=16,
                         network_alpha=16, use_gradient_checkpointing=row.checkpointing,
                         train_model_precision=row.precision.value)
    with torch.device("meta"):
        components = full_size_components(row.family)
    storage = row.precision if row.precision is ModelPrecision.INT8 else None
    freeze_model(components, torch.device("meta"), torch.bfloat16, row.checkpointing, weights=storage)
    memory = estimate_run(components, NetworkSpec.from_config(config), config, GPU, torch.bfloat16, torch.bfloat16,
                          seconds=False)
    return {"family": row.family.value, "pixels": row.pixels, "batch": row.batch,
            "checkpointing": row.checkpointing, "precision": row.precision.value,
            "model_gib": memory.weights / GIB, "network_gib": memory.network / GIB,
            "activations_gib": memory.activations / GIB, "peak_gib": memory.peak / GIB}


def table(rows: list[dict]) -> str:
    lines = ["| family | px | batch | checkpointing | model | frozen model GiB | activations GiB | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        checkpointing = "yes" if row["checkpointing"] else "no"
        lines.append(f"| {row['family']} | {row['pixels']} | {row['batch']} | {checkpointing} | {row['precision']} "
                     f"| {row['model_gib']:.2f} | {row['activations_gib']:.2f} "
                     f"| {row['peak_gib']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [estimate_row(row) for row in ROWS]
    print(json.dumps(rows, indent=2) if args.json else table(rows))


if __name__ == "__main__":
    main()
