"""The saved LoRA file: kohya key names, fp16 by default, kohya's ss_* and modelspec metadata."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from traintrain import __version__
from traintrain.choices import NetworkType
from traintrain.errors import UserError
from traintrain.fileio import atomic_path

# kohya's ss_network_module: LoRA/LoCon load as networks.lora, LyCORIS algorithms as lycoris.kohya.
NETWORK_MODULES = {
    NetworkType.LIERLA: "networks.lora", NetworkType.C3LIER: "networks.lora", NetworkType.LOHA: "lycoris.kohya",
    NetworkType.LOKR: "lycoris.kohya",
}


def save_lora(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write atomically: the previous file of that name survives any failure."""
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in metadata.items()})


def load_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"LoRA file not found: {path} (give the path of a .safetensors LoRA)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable .safetensors LoRA ({exc})") from None
    return tensors, metadata


def build_metadata(
    *, config, spec, family_spec, v_prediction: bool, seed: int, started_at: float, steps: int,
    tag_frequency: dict | None = None, num_images: int = 0, extra: dict | None = None,
) -> dict[str, str]:
    """kohya ss_* keys (read by A1111/Forge/ComfyUI info panels) plus modelspec keys."""
    resolution = f"{config.image_size[1]}x{config.image_size[0]}"
    metadata = {
        "ss_network_module": NETWORK_MODULES[spec.network_type],
        "ss_network_dim": str(spec.rank),
        "ss_network_alpha": _number(spec.alpha),
        "ss_network_args": json.dumps(spec.network_args) if spec.network_args else "null",
        "ss_base_model_version": family_spec.base_model_version,
        "ss_v2": str(family_spec.family.value == "sd2"),
        "ss_v_parameterization": str(bool(v_prediction)),
        "ss_output_name": config.output_name,
        "ss_training_started_at": str(started_at),
        "ss_training_finished_at": str(time.time()),
        "ss_max_train_steps": str(steps),
        "ss_steps": str(steps),
        "ss_learning_rate": _number(config.train_learning_rate),
        "ss_unet_lr": _number(config.train_learning_rate),
        "ss_text_encoder_lr": _number(config.train_textencoder_learning_rate or config.train_learning_rate),
        "ss_optimizer": config.train_optimizer.value,
        "ss_lr_scheduler": config.train_lr_scheduler.value,
        "ss_lr_warmup_steps": str(config.train_lr_warmup_steps),
        "ss_seed": str(seed),
        "ss_min_snr_gamma": _number(config.train_snr_gamma),
        "ss_batch_size_per_device": str(config.train_batch_size),
        "ss_resolution": f"({config.image_size[1]}, {config.image_size[0]})",
        "ss_num_train_images": str(num_images),
        "ss_mixed_precision": config.train_model_precision.value,
        "ss_save_precision": config.save_precision.value,
        "ss_network_train_unet_only": str(not spec.trains_text_encoder),
        "ss_tag_frequency": json.dumps(tag_frequency or {}, ensure_ascii=False),
        "ss_training_comment": f"TrainTrain {__version__}, mode {config.mode}",
        "traintrain_mode": config.mode,
        "traintrain_blocks": ",".join(spec.blocks),
        "traintrain_element": spec.element.value,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": family_spec.architecture(v_prediction),
        "modelspec.prediction_type": _prediction_type(family_spec, v_prediction),
        "modelspec.implementation": family_spec.modelspec_implementation,
        "modelspec.title": config.output_name,
        "modelspec.resolution": resolution,
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started_at)),
    }
    if config.model_vae:  # as sd-scripts records its --vae: the file or folder name
        metadata["ss_vae_name"] = Path(config.model_vae).name
    metadata.update(extra or {})
    return metadata


def _prediction_type(family_spec, v_prediction: bool) -> str:
    """Flux predicts the flow (noise - image), neither epsilon nor v."""
    if family_spec.flow_matching:
        return "flow"
    return "v" if v_prediction else "epsilon"


def _number(value: float) -> str:
    return repr(float(value)) if float(value) != int(value) else str(int(value))
