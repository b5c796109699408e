"""Load any supported model offline: find its family (SD1/SD2/SDXL, SD3, Flux.1, Z-Image) from a
folder's pipeline or a single file's keys, and hand it to that family's loader; read a model's weight
shapes from headers alone for the pre-flight checks. Every failure is a one-line UserError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from traintrain.errors import UserError
from traintrain.models.assembly import TEXT_ENCODER_FOLDERS
from traintrain.models.checkpoint_kinds import checkpoint_family, no_ema_weights, transformer_file_family
from traintrain.models.checkpoint_reading import check_quantized_layers, safetensors_shapes, torch_load
from traintrain.models.components import ModelComponents
from traintrain.models.families import TRANSFORMER_FAMILIES, Family
from traintrain.models.flux_loading import TRANSFORMER_ROOTS as FLUX_ROOTS
from traintrain.models.flux_loading import is_flux_folder, load_flux_folder, load_flux_single_file
from traintrain.models.ldm_convert import TEXT_ENCODER_PREFIXES, UNET_PREFIX
from traintrain.models.prediction import PredictionChoice, choose_prediction
from traintrain.models.sd3_loading import TRANSFORMER_ROOTS as SD3_ROOTS
from traintrain.models.sd3_loading import is_sd3_folder, load_sd3_folder, load_sd3_single_file
from traintrain.models.sd_loading import load_sd_folder, load_sd_single_file
from traintrain.models.tokenizers import check_vocab_fits
from traintrain.models.zimage_keys import TRANSFORMER_ROOTS as ZIMAGE_ROOTS
from traintrain.models.zimage_loading import is_zimage_folder, load_zimage
from traintrain.training.events import Reporter, ignore


def load_model(path, *, tokenizer_dir=None, v_prediction: bool | None = None, dtype=torch.float32,
               use_ema: bool = False, report: Reporter = ignore) -> ModelComponents:
    """UNet, VAE, text encoder(s) and tokenizer(s) of the model at `path`, never touching the network.

    `v_prediction`: an explicit value wins; else a `v_pred` marker key in the checkpoint, the diffusers
    scheduler config or a `X.yaml` beside the checkpoint decides; else SD2 UNets are probed as A1111
    does (models/prediction.py); else epsilon. `components.prediction` says which and why.
    `report` gets a Message when the tokenizers are built from CLIP's vocabulary, and one saying which
    UNet weights a checkpoint with EMA weights gave (`use_ema`: the EMA ones; see checkpoint_kinds).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; check the model path", field="model")
    transformer_family = _transformer_family(path)
    components = _load_transformer_family(transformer_family, path, tokenizer_dir, report, use_ema) if (
        transformer_family) else None
    if components is None and path.is_dir():
        check_diffusers_folder(path)
        components = load_sd_folder(path, family_from_folder(path), tokenizer_dir, report, use_ema)
    elif components is None:
        components = load_sd_single_file(path, tokenizer_dir, report, use_ema)
    check_vocab_fits(components.tokenizers, components.text_encoders)
    for model in (components.denoiser, components.vae, *components.text_encoders):
        if any(p.dtype != dtype for p in model.parameters()):  # diffusers warns about any cast, even a no-op one
            model.to(dtype)
        model.eval()
    if components.spec.flow_matching:  # neither epsilon nor v: no choice to make
        components.prediction = PredictionChoice(
            False, f"{components.family.value} models train on the flow-matching objective")
        return components
    components.prediction = choose_prediction(components, components.prediction, v_prediction)
    components.v_prediction = components.prediction.v_prediction
    return components


def _transformer_family(path: Path) -> Family | None:
    """Flux, SD3 or Z-Image, from the pipeline a folder names or the keys of a single file; None for the UNet
    families."""
    if path.is_dir():
        return _pipeline_family(path)
    shapes = safetensors_shapes(path) if path.suffix.lower() == ".safetensors" else {}
    return transformer_file_family(shapes)


def _load_transformer_family(family: Family, path: Path, tokenizer_dir, report: Reporter,
                             use_ema: bool) -> ModelComponents:
    if use_ema:  # Flux, SD3 and Z-Image files hold one set of transformer weights
        raise no_ema_weights(path)
    if family is Family.ZIMAGE:
        return load_zimage(path, tokenizer_dir, report)
    if family is Family.SD3:
        return (load_sd3_folder if path.is_dir() else load_sd3_single_file)(path, tokenizer_dir, report)
    return (load_flux_folder if path.is_dir() else load_flux_single_file)(path, tokenizer_dir, report)


@dataclass
class WeightShapes:
    """What a model file's headers tell before any weight is read."""

    family: Family
    unet: list[tuple[int, ...]]
    text_encoders: list[tuple[int, ...]]


def read_weight_shapes(path) -> WeightShapes:
    """Family and UNet / text-encoder weight shapes from headers only (pickles memory-mapped).

    A missing, broken, unsafe or foreign model is refused in a second instead of after minutes of
    loading, and the shapes bound the size of the files the run will save.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; check the model path", field="model")
    if path.is_dir():
        check_diffusers_folder(path)
        family = family_from_folder(path)
        folders = [path / name for name in TEXT_ENCODER_FOLDERS if (path / name).is_dir()]
        denoiser = path / ("transformer" if family in TRANSFORMER_FAMILIES else "unet")
        return WeightShapes(family, _folder_shapes(denoiser), [s for f in folders for s in _folder_shapes(f)])
    if path.suffix.lower() == ".safetensors":
        shapes = safetensors_shapes(path)
        check_quantized_layers(path)
    else:
        shapes = {key: tuple(value.shape) for key, value in torch_load(path, mmap=True).items()}
    family = checkpoint_family(path, shapes)
    if family in TRANSFORMER_FAMILIES:  # text encoders and VAE may be separate files; a LoRA trains the transformer
        roots = {Family.FLUX: FLUX_ROOTS, Family.SD3: SD3_ROOTS, Family.ZIMAGE: ZIMAGE_ROOTS}[family]
        transformer = [shape for key, shape in shapes.items() if key.removeprefix(UNET_PREFIX).startswith(roots)]
        return WeightShapes(family, transformer, [])
    return WeightShapes(
        family,
        [shape for key, shape in shapes.items() if key.startswith(UNET_PREFIX)],
        [shape for key, shape in shapes.items() if key.startswith(TEXT_ENCODER_PREFIXES[family])],
    )


def _folder_shapes(folder: Path) -> list[tuple[int, ...]]:
    """The weight shapes of every safetensors file in one part of a diffusers folder."""
    return [shape for file in sorted(folder.glob("*.safetensors")) for shape in safetensors_shapes(file).values()]


def check_diffusers_folder(path: Path) -> None:
    """Refuse a folder that is not a diffusers pipeline (a model_index.json and its denoiser's config)."""
    denoiser = "unet"
    if (path / "model_index.json").is_file() and (path / "transformer").is_dir():
        denoiser = "transformer"  # Flux, SD3 (is_flux_folder / is_sd3_folder name the pipeline class)
    if not (path / "model_index.json").is_file() or not (path / denoiser / "config.json").is_file():
        raise UserError(
            f"{path}: folder is not a diffusers model (no model_index.json with {denoiser}/); "
            "give a diffusers model folder or a .safetensors/.ckpt file",
            field="model",
        )


def family_from_folder(path: Path) -> Family:
    """Flux names its pipeline; SDXL has a second text encoder; SD2's OpenCLIP encoder uses gelu where SD1's
    CLIP-L uses quick_gelu."""
    pipeline_family = _pipeline_family(path)
    if pipeline_family is not None:
        return pipeline_family
    if (path / "text_encoder_2").is_dir():
        return Family.SDXL
    encoder_config = path / "text_encoder" / "config.json"
    if not encoder_config.is_file():
        raise UserError(
            f"{path}: diffusers folder without text_encoder/config.json; give a complete SD1/SD2/SDXL model folder",
            field="model",
        )
    return Family.SD2 if json.loads(encoder_config.read_text()).get("hidden_act") == "gelu" else Family.SD1


def _pipeline_family(path: Path) -> Family | None:
    """Flux, SD3 or Z-Image, by the pipeline class a diffusers folder names; None for the UNet families."""
    for family, is_folder in ((Family.FLUX, is_flux_folder), (Family.SD3, is_sd3_folder),
                              (Family.ZIMAGE, is_zimage_folder)):
        if is_folder(path):
            return family
    return None
