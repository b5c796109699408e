"""Load a Z-Image model offline: a diffusers folder (ZImagePipeline: transformer, vae, Qwen3 text_encoder,
Qwen2 tokenizer), or the reference single file with its companions (models/zimage_single_file.py)."""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL

from traintrain.models.assembly import load_pretrained
from traintrain.models.components import ModelComponents
from traintrain.models.discovery import pipeline_class, require_parts
from traintrain.models.families import Family
from traintrain.models.flow_schedule import folder_scheduler_config
from traintrain.models.zimage_single_file import load_zimage_single_file
from traintrain.models.zimage_text import find_zimage_tokenizer, zimage_class
from traintrain.training.events import Reporter, ignore

PIPELINE = "ZImagePipeline"


def is_zimage_folder(path: Path) -> bool:
    return pipeline_class(path) == PIPELINE


def load_zimage(path: Path, tokenizer_dir=None, report: Reporter = ignore) -> ModelComponents:
    return (load_zimage_folder if path.is_dir() else load_zimage_single_file)(path, tokenizer_dir, report)


def load_zimage_folder(path: Path, tokenizer_dir=None, report: Reporter = ignore) -> ModelComponents:
    require_parts(path, "Z-Image", PIPELINE, ("transformer", "vae", "text_encoder"),
                  "transformer, vae, text_encoder, tokenizer")
    transformer = load_pretrained(zimage_class("ZImageTransformer2DModel"), path, "transformer")
    vae = load_pretrained(AutoencoderKL, path, "vae")
    encoder = load_pretrained(zimage_class("Qwen3Model"), path, "text_encoder")
    tokenizer = find_zimage_tokenizer(path, tokenizer_dir)
    return ModelComponents(Family.ZIMAGE, transformer, vae, [encoder], [tokenizer], source=str(path),
                           scheduler_config=folder_scheduler_config(path))
