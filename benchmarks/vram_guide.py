"""VRAM guidance per family from the pre-flight estimate (training/estimate.py), on the meta device.

    python benchmarks/vram_guide.py            # the table in the README's performance section
    python benchmarks/vram_guide.py --json

Each row builds the family's real architecture (UNet or Flux.1-dev's transformer, VAE, text encoders:
CLIP-L and T5-XXL for Flux, its prompts at 512 T5 tokens) with no memory behind it, freezes it in the
row's precision (int8/fp8 rows store the denoiser's and text encoders' layers in 8 bits as
`train_model_precision=int8/fp8` does) and traces one LoRA step (rank 16, AdamW, bf16 adapter) at the
row's resolution, batch and checkpointing. What it prints is the estimate a run prints before its
first step: peak memory = frozen weights + adapter with gradients and optimizer states + activations
kept for the backward pass, plus 10 % for the allocator. The trace's activations were checked against
a real step on the CPU (within 4 %, tests/test_estimate.py; Flux's equal, tests/test_flux_modes.py); on a
GPU this is not yet measured. Flux's frozen model includes T5-XXL (about 4.5 GiB in 8 bits), which stays on the
device as the text encoders do for every family.
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
from traintrain.models.components import ModelComponents  # noqa: E402
from traintrain.models.families import Family  # noqa: E402
from traintrain.models.flux_text import T5_MAX_LENGTH, build_tiny_t5_tokenizer  # noqa: E402
from traintrain.models.loading import build_text_encoder, config_template  # noqa: E402
from traintrain.models.tokenizers import build_tiny_tokenizer  # noqa: E402
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
    Row(Family.FLUX, 1024, 1, False, ModelPrecision.BF16),
    Row(Family.FLUX, 1024, 1, True, ModelPrecision.BF16),
    Row(Family.FLUX, 1024, 1, True, ModelPrecision.INT8),
    Row(Family.FLUX, 1024, 1, True, ModelPrecision.FP8),
    Row(Family.FLUX, 512, 1, True, ModelPrecision.INT8),
]
EIGHT_BIT = (ModelPrecision.INT8, ModelPrecision.FP8)


def full_size_flux() -> ModelComponents:
    """Flux.1-dev's transformer (19 double, 38 single blocks, width 3072, guidance input), its 16-channel VAE,
    CLIP-L and T5-XXL from the bundled configs, with the tiny tokenizers (T5's set to 512 tokens as dev's):
    the architecture and the prompt length decide the cost."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    clip_tokenizer, t5_tokenizer = build_tiny_tokenizer(), build_tiny_t5_tokenizer()
    t5_tokenizer.model_max_length = T5_MAX_LENGTH
    transformer = FluxTransformer2DModel.from_config(config_template(Family.FLUX, "transformer"))
    vae = AutoencoderKL.from_config(config_template(Family.FLUX, "vae"))
    clip = build_text_encoder(config_template(Family.FLUX, "text_encoder"))
    t5 = T5EncoderModel(T5Config(**config_template(Family.FLUX, "text_encoder_2")))
    return ModelComponents(Family.FLUX, transformer, vae, [clip, t5], [clip_tokenizer, t5_tokenizer],
                           source="random flux")


def estimate_row(row: Row) -> dict:
    config = TrainConfig(image_size=[row.pixels, row.pixels], train_batch_size=row.batch, network_rank=16,
                         network_alpha=16, use_gradient_checkpointing=row.checkpointing,
                         train_model_precision=row.precision.value)
    with torch.device("meta"):
        components = full_size_flux() if row.family is Family.FLUX else full_size_components(row.family)
    storage = row.precision if row.precision in EIGHT_BIT else None
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
