"""What a single model file really holds, told from key names and shapes before any weight is read.

Users hand over whatever their model folder has: inpainting or pix2pix fine-tunes, the SDXL
refiner, LoRAs, VAEs, embeddings, UNet-only extracts. None of these can be trained on as a
text-to-image model, and each would otherwise fail minutes later with a shape error; here each is
refused in one line naming what the file is and what to give instead. The same checks run on the
headers (pre-flight) and on the loaded tensors, so both paths agree.

Also here: which UNet weights of a checkpoint with an EMA copy are trained on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from traintrain.errors import UserError
from traintrain.models.families import (
    Family,
    detect_family_from_ldm_keys,
    is_flux_checkpoint,
    is_lumina2_checkpoint,
    is_sd3_checkpoint,
    is_zimage_checkpoint,
)
from traintrain.models.ldm_convert import TEXT_ENCODER_PREFIXES, UNET_PREFIX, VAE_PREFIX
from traintrain.training.events import Message, Reporter

Shapes = Mapping[str, tuple[int, ...]]

TEXT_ENCODER_ROOTS = ("cond_stage_model.", "conditioner.embedders.")
TEXT_TO_IMAGE_CHANNELS = 4
# Extra UNet inputs concatenated to the 4 latent channels, by what they condition on.
SPECIAL_UNETS = {
    9: "an inpainting model (its UNet takes 9 input channels: latents, mask and masked image)",
    8: "an instruct-pix2pix model (its UNet takes 8 input channels: latents and the image to edit)",
    5: "a depth-conditioned model (SD2-depth: its UNet takes 5 input channels, latents and a depth map)",
}
REFINER_LABEL_INPUTS = 2560  # the refiner's pooled bigG + aesthetic score; the base has 2816
REFINER_MODEL_CHANNELS = 384  # the base has 320
LORA_KEY = re.compile(
    r"^(lora_unet_|lora_te\d?_|lycoris_)"
    r"|(^|\.)(lora_down|lora_up|lora_A|lora_B|hada_w[12]_[ab]|lokr_w[12](_[ab])?)(\.|$)"
    r"|lora\.(down|up)\."  # diffusers' old attention processors: `to_q_lora.down.weight`
)
EMBEDDING_KEYS = {"emb_params", "clip_l", "clip_g"}
VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
EMA_PREFIX = "model_ema."
EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")
PLAIN_MODEL_FIX = "give a plain text-to-image Stable Diffusion 1.x, 2.x or XL checkpoint"


def tensor_shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


def checkpoint_family(path: Path, shapes: Shapes) -> Family:
    """The family of a text-to-image checkpoint; any other kind of file is refused, saying what it is."""
    _refuse_lora(path, shapes)
    transformer_family = transformer_file_family(shapes)  # before the LDM checks: SD3 shares the UNet's prefix
    if transformer_family is not None:  # its text encoders and VAE may be separate files (models/*_loading.py)
        return transformer_family
    if is_lumina2_checkpoint(shapes):
        raise UserError(f"{path}: this is a Lumina 2 model, which TrainTrain does not train (it shares Z-Image's "
                        "key names)", "give a Z-Image or Z-Image-Turbo transformer file", field="model")
    has_unet = any(key.startswith(UNET_PREFIX) for key in shapes)
    if not has_unet and not any(key.startswith(TEXT_ENCODER_ROOTS) for key in shapes):
        raise _not_a_model(path, shapes)
    if has_unet:
        _refuse_special_unet(path, shapes)
    _refuse_refiner(path, shapes)
    family = detect_family_from_ldm_keys(shapes)
    _refuse_missing_parts(path, shapes, family)
    if family is None:
        raise _not_a_model(path, shapes)
    return family


def transformer_file_family(shapes: Shapes) -> Family | None:
    """Flux, SD3 or Z-Image when the file holds that transformer in its reference layout; None otherwise."""
    detectors = ((Family.FLUX, is_flux_checkpoint), (Family.SD3, is_sd3_checkpoint),
                 (Family.ZIMAGE, is_zimage_checkpoint))
    return next((family for family, holds in detectors if holds(shapes)), None)


def _refuse_lora(path: Path, shapes: Shapes) -> None:
    if any(LORA_KEY.search(key) for key in shapes):
        raise UserError(
            f"{path}: this is a LoRA/LyCORIS network, not a model",
            "give the Stable Diffusion checkpoint to train on (network_resume continues a saved LoRA)",
            field="model",
        )


def _not_a_model(path: Path, shapes: Shapes) -> UserError:
    keys = set(shapes)
    if keys & EMBEDDING_KEYS or any(key.startswith("string_to_param") for key in keys):
        return UserError(
            f"{path}: this is a textual-inversion embedding, not a model",
            "give the Stable Diffusion checkpoint to train on",
            field="model",
        )
    if _is_vae_alone(keys):
        return UserError(
            f"{path}: this is a VAE alone, not a model",
            "give a full Stable Diffusion checkpoint (a separate VAE goes in model_vae)",
            field="model",
        )
    return UserError(
        f"{path}: not a Stable Diffusion checkpoint (no SD1/SD2/SDXL text-encoder or UNet keys, nor an SD3, "
        "Flux.1 or Z-Image transformer)",
        "give an SD1.x, SD2.x or SDXL checkpoint, or an SD3, Flux.1 or Z-Image transformer file",
        field="model",
    )


def _is_vae_alone(keys: set[str]) -> bool:
    """Encoder and decoder weights and nothing else, in the LDM layout or diffusers' (`first_stage_model.` optional)."""
    parts = {key.removeprefix(VAE_PREFIX) for key in keys}
    return all(part.startswith(VAE_PARTS) for part in parts) and all(
        any(part.startswith(side) for part in parts) for side in ("encoder.", "decoder.")
    )


def _refuse_special_unet(path: Path, shapes: Shapes) -> None:
    first_conv = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    channels = first_conv[1] if first_conv is not None and len(first_conv) == 4 else TEXT_TO_IMAGE_CHANNELS
    if any(key.startswith("depth_model.") for key in shapes):
        channels = 5
    if channels == TEXT_TO_IMAGE_CHANNELS:
        return
    kind = SPECIAL_UNETS.get(channels, f"a special-purpose model (its UNet takes {channels} input channels)")
    raise UserError(
        f"{path}: this is {kind}, not a text-to-image model", PLAIN_MODEL_FIX + " (4 input channels)", field="model"
    )


def _refuse_refiner(path: Path, shapes: Shapes) -> None:
    """The refiner's conditioner has only OpenCLIP-bigG (at slot 0, where the base has CLIP-L)."""
    label = shapes.get(UNET_PREFIX + "label_emb.0.0.weight")
    first_conv = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if not (
        any(key.startswith("conditioner.embedders.0.model.") for key in shapes)
        or (label is not None and label[-1] == REFINER_LABEL_INPUTS)
        or (label is not None and first_conv is not None and first_conv[0] == REFINER_MODEL_CHANNELS)
    ):
        return
    raise UserError(
        f"{path}: this is the SDXL refiner (OpenCLIP-bigG text encoder only, no CLIP-L), not a base model",
        "give the SDXL base model or a fine-tune of it",
        field="model",
    )


def _refuse_missing_parts(path: Path, shapes: Shapes, family: Family | None) -> None:
    """A UNet or text encoder missing is fatal; a missing VAE is left to the loader (an external one may serve)."""
    encoders = TEXT_ENCODER_PREFIXES[family] if family else TEXT_ENCODER_ROOTS
    parts = {"UNet": (UNET_PREFIX,)} | {_encoder_name(family, prefix): (prefix,) for prefix in encoders}
    missing = [name for name, prefixes in parts.items() if not any(key.startswith(prefixes) for key in shapes)]
    if not missing:
        return
    has_vae = any(key.startswith(VAE_PREFIX) for key in shapes)
    present = [name for name in parts if name not in missing] + (["VAE"] if has_vae else [])
    lacking = missing + ([] if has_vae else ["VAE"])
    raise UserError(
        f"{path}: this {family.value + ' ' if family else ''}file holds only the {' and '.join(present)} "
        f"(no {', no '.join(lacking)})",
        "give the complete checkpoint (UNet, text encoder and VAE in one file) or a diffusers folder",
        field="model",
    )


def _encoder_name(family: Family | None, prefix: str) -> str:
    if family is Family.SDXL:
        return "CLIP-L text encoder" if prefix.endswith(".transformer.") else "OpenCLIP-bigG text encoder"
    return "text encoder"


# ---- EMA weights --------------------------------------------------------------------------------


def choose_unet_weights(
    path: Path, state: dict[str, torch.Tensor], use_ema: bool, report: Reporter
) -> dict[str, torch.Tensor]:
    """The state with the UNet weights to train on: the trained ones, or with `use_ema` the EMA copy.

    LDM checkpoints keep the EMA UNet as `model_ema.<key without dots>` (e.g.
    `model_ema.diffusion_modelinput_blocks00weight`); parameters the EMA does not track are the same
    in both. The `model_ema.*` tensors are dropped either way.
    """
    ema = {key: value for key, value in state.items() if key.startswith(EMA_PREFIX) and key not in EMA_BOOKKEEPING}
    if not ema:
        if use_ema:
            raise no_ema_weights(path)
        return state
    chosen = {key: value for key, value in state.items() if not key.startswith(EMA_PREFIX)}
    if not use_ema:
        report(Message(
            "the checkpoint has EMA weights; training on the non-EMA ones (model_use_ema picks the EMA ones)"
        ))
        return chosen
    replaced = 0
    for key in chosen:
        flat = EMA_PREFIX + "".join(key.split(".")[1:])
        if key.startswith(UNET_PREFIX) and flat in ema:
            chosen[key] = ema[flat]
            replaced += 1
    if not replaced:
        raise UserError(
            f"{path}: the checkpoint's model_ema weights match none of its UNet weights",
            "turn model_use_ema off to train on the UNet weights",
            field="model_use_ema",
        )
    report(Message(f"the checkpoint has EMA weights; training on the EMA UNet ({replaced} tensors, model_use_ema)"))
    return chosen


def no_ema_weights(path: Path) -> UserError:
    return UserError(
        f"{path}: model_use_ema is set but the model has no EMA weights",
        "turn model_use_ema off or give a checkpoint with EMA weights",
        field="model_use_ema",
    )
