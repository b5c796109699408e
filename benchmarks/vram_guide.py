"""VRAM guidance per family from the pre-flight estimate (training/estimate.py), on the meta device.

    python benchmarks/vram_guide.py            # the table in the README's performance section
    python benchmarks/vram_guide.py --json

Each row builds the model's real architecture (UNet or transformer, VAE, text encoders: CLIP-L and T5-XXL
for Flux.1-dev, its prompts at 512 T5 tokens; CLIP-L, CLIP-G and T5-XXL for SD3.5, 77 + 256 tokens; Qwen3-4B
for Z-Image-Turbo, its prompts at the full 512 tokens, an upper bound) with no memory behind it, freezes it in the
row's precision (int8/fp8 rows store the denoiser's and text encoders' layers in 8 bits as
`train_model_precision=int8/fp8` does) and traces one LoRA step (rank 16, AdamW, bf16 adapter) at the
row's resolution, batch and checkpointing. What it prints is the estimate a run prints before its
first step: peak memory = frozen weights + adapter with gradients and optimizer states + activations
kept for the backward pass, plus 10 % for the allocator. The trace's activations were checked against
a real step on the CPU (within 4 %, tests/test_estimate.py; Flux's equal, tests/test_flux_modes.py; on a
GPU this is not yet measured; SD3's and Z-Image's equal, tests/test_estimate.py). The frozen model leaves out
T5-XXL (Flux, SD3.5) and Z-Image's Qwen3-4B: they wait on the CPU while training (models/encoder_offload.py);
the CLIP encoders stay on the device. `--models zimage-turbo flux` limits the table to those rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_variants import full_size_components  # noqa: E402

from traintrain.choices import ModelPrecision  # noqa: E402
from traintrain.config import TrainConfig  # noqa: E402
from traintrain.models.assembly import build_text_encoder, config_template  # noqa: E402
from traintrain.models.components import ModelComponents  # noqa: E402
from traintrain.models.families import Family  # noqa: E402
from traintrain.models.flux_text import T5_MAX_LENGTH, build_tiny_t5_tokenizer  # noqa: E402
from traintrain.models.sd3_text import T5_MAX_LENGTH as SD3_T5_LENGTH  # noqa: E402
from traintrain.models.tokenizers import build_tiny_tokenizer  # noqa: E402
from traintrain.models.zimage_text import MAX_LENGTH as QWEN_LENGTH  # noqa: E402
from traintrain.models.zimage_text import build_tiny_qwen_tokenizer, zimage_class  # noqa: E402
from traintrain.networks.network import NetworkSpec  # noqa: E402
from traintrain.training.estimate import GIB, estimate_run  # noqa: E402
from traintrain.training.runtime import freeze_model  # noqa: E402

GPU = torch.device("cuda")  # the estimate's device; only its seconds would ask it for a figure


@dataclass(frozen=True)
class Row:
    model: str  # a key of MODELS
    pixels: int
    batch: int
    checkpointing: bool
    precision: ModelPrecision


ROWS = [
    Row("sd1", 512, 1, False, ModelPrecision.BF16),
    Row("sd1", 512, 4, False, ModelPrecision.BF16),
    Row("sd1", 512, 4, True, ModelPrecision.BF16),
    Row("sd1", 512, 1, False, ModelPrecision.INT8),
    Row("sd2", 768, 1, False, ModelPrecision.BF16),
    Row("sd2", 768, 1, True, ModelPrecision.BF16),
    Row("sdxl", 1024, 1, False, ModelPrecision.BF16),
    Row("sdxl", 1024, 1, True, ModelPrecision.BF16),
    Row("sdxl", 1024, 1, True, ModelPrecision.INT8),
    Row("sdxl", 1024, 4, True, ModelPrecision.BF16),
    Row("flux", 1024, 1, False, ModelPrecision.BF16),
    Row("flux", 1024, 1, True, ModelPrecision.BF16),
    Row("flux", 1024, 1, True, ModelPrecision.INT8),
    Row("flux", 1024, 1, True, ModelPrecision.FP8),
    Row("flux", 512, 1, True, ModelPrecision.INT8),
    Row("sd3.5-medium", 1024, 1, False, ModelPrecision.BF16),
    Row("sd3.5-medium", 1024, 1, True, ModelPrecision.BF16),
    Row("sd3.5-large", 1024, 1, True, ModelPrecision.BF16),
    Row("sd3.5-large", 1024, 1, True, ModelPrecision.INT8),
    Row("zimage-turbo", 1024, 1, False, ModelPrecision.BF16),
    Row("zimage-turbo", 1024, 1, True, ModelPrecision.BF16),
    Row("zimage-turbo", 1024, 1, True, ModelPrecision.INT8),
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


# SD3.5's transformers, from their releases' transformer/config.json (stabilityai/stable-diffusion-3.5-medium
# and -large on the Hugging Face hub, as diffusers 0.31/0.32 wrote them); diffusers' single_file_utils agrees
# (SD3.5 Medium: 147456 = 384 x 384 positions; Large: joint_blocks.37, 38 blocks). Heads of 64 and 64 per
# block of width (1536 = 24 x 64, 2432 = 38 x 64) as in Stability AI's MMDiT. The rest is the bundled SD3
# Medium template's (16 channels, patch 2, T5 width 4096, pooled 2048).
SD35_TRANSFORMERS = {
    "sd3.5-medium": {"num_layers": 24, "num_attention_heads": 24, "attention_head_dim": 64,
                     "caption_projection_dim": 1536, "pos_embed_max_size": 384, "qk_norm": "rms_norm",
                     "dual_attention_layers": list(range(13))},
    "sd3.5-large": {"num_layers": 38, "num_attention_heads": 38, "attention_head_dim": 64,
                    "caption_projection_dim": 2432, "pos_embed_max_size": 192, "qk_norm": "rms_norm",
                    "dual_attention_layers": []},
}


def full_size_sd35(model: str) -> ModelComponents:
    """SD3.5 Medium or Large (SD35_TRANSFORMERS), its 16-channel VAE, CLIP-L and CLIP-G with projections and
    T5-XXL from the bundled SD3 configs, with the tiny tokenizers (T5's at 256 tokens, the pipeline's)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import T5Config, T5EncoderModel

    t5_tokenizer = build_tiny_t5_tokenizer()
    t5_tokenizer.model_max_length = SD3_T5_LENGTH
    tokenizers = [build_tiny_tokenizer(), build_tiny_tokenizer(), t5_tokenizer]
    transformer = SD3Transformer2DModel.from_config(config_template(Family.SD3, "transformer")
                                                    | SD35_TRANSFORMERS[model])
    vae = AutoencoderKL.from_config(config_template(Family.SD3, "vae"))
    clips = [build_text_encoder(config_template(Family.SD3, folder)) for folder in ("text_encoder", "text_encoder_2")]
    t5 = T5EncoderModel(T5Config(**config_template(Family.SD3, "text_encoder_3")))
    return ModelComponents(Family.SD3, transformer, vae, [*clips, t5], tokenizers, source=f"random {model}")


def full_size_zimage() -> ModelComponents:
    """Z-Image-Turbo (6B): the S3-DiT transformer (width 3840, 30 layers, 2 + 2 refiners), Flux's VAE and
    Qwen3-4B from the bundled configs (the release's own; models/configs/zimage/SOURCES.md), with the tiny
    tokenizer at the pipeline's 512 tokens."""
    from diffusers import AutoencoderKL

    tokenizer = build_tiny_qwen_tokenizer()
    tokenizer.model_max_length = QWEN_LENGTH
    transformer = zimage_class("ZImageTransformer2DModel").from_config(config_template(Family.ZIMAGE, "transformer"))
    vae = AutoencoderKL.from_config(config_template(Family.ZIMAGE, "vae"))
    encoder = zimage_class("Qwen3Model")(zimage_class("Qwen3Config")(**config_template(Family.ZIMAGE, "text_encoder")))
    return ModelComponents(Family.ZIMAGE, transformer, vae, [encoder], [tokenizer], source="random zimage-turbo")


MODELS: dict[str, Callable[[], ModelComponents]] = {
    "sd1": lambda: full_size_components(Family.SD1),
    "sd2": lambda: full_size_components(Family.SD2),
    "sdxl": lambda: full_size_components(Family.SDXL),
    "flux": full_size_flux,
    "sd3.5-medium": lambda: full_size_sd35("sd3.5-medium"),
    "sd3.5-large": lambda: full_size_sd35("sd3.5-large"),
    "zimage-turbo": full_size_zimage,
}


def estimate_row(row: Row) -> dict:
    config = TrainConfig(image_size=[row.pixels, row.pixels], train_batch_size=row.batch, network_rank=16,
                         network_alpha=16, use_gradient_checkpointing=row.checkpointing,
                         train_model_precision=row.precision.value)
    with torch.device("meta"):
        components = MODELS[row.model]()
    storage = row.precision if row.precision in EIGHT_BIT else None
    freeze_model(components, torch.device("meta"), torch.bfloat16, row.checkpointing, weights=storage)
    memory = estimate_run(components, NetworkSpec.from_config(config), config, GPU, torch.bfloat16, torch.bfloat16,
                          seconds=False)
    return {"model": row.model, "pixels": row.pixels, "batch": row.batch,
            "checkpointing": row.checkpointing, "precision": row.precision.value,
            "model_gib": memory.weights / GIB, "network_gib": memory.network / GIB,
            "activations_gib": memory.activations / GIB, "peak_gib": memory.peak / GIB}


def table(rows: list[dict]) -> str:
    lines = ["| model | px | batch | checkpointing | base | frozen model GiB | activations GiB | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        checkpointing = "yes" if row["checkpointing"] else "no"
        lines.append(f"| {row['model']} | {row['pixels']} | {row['batch']} | {checkpointing} | {row['precision']} "
                     f"| {row['model_gib']:.2f} | {row['activations_gib']:.2f} "
                     f"| {row['peak_gib']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), help="only these models' rows")
    args = parser.parse_args()
    rows = [estimate_row(row) for row in ROWS if not args.models or row.model in args.models]
    print(json.dumps(rows, indent=2) if args.json else table(rows))


if __name__ == "__main__":
    main()
