"""Building a model's parts offline, for every family: the bundled config templates, a model built
without memory and given converted weights strictly, one part of a diffusers folder, and the counting
of numbered layers in a state dict that reading an architecture from its weights needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import accelerate
from safetensors import SafetensorError
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, PreTrainedModel

from traintrain.errors import UserError
from traintrain.models.checkpoint_reading import first_line
from traintrain.models.families import Family

CONFIG_ROOT = Path(__file__).parent / "configs"
TEXT_ENCODER_FOLDERS = ("text_encoder", "text_encoder_2")


def config_template(family: Family, component: str) -> dict:
    """The bundled config JSON of a family's component (`unet`, `vae`, `text_encoder`, `scheduler`, ...)."""
    name = "scheduler_config.json" if component.startswith("scheduler") else "config.json"
    return json.loads((CONFIG_ROOT / family.value / component / name).read_text())


def text_encoder_heads(hidden_size: int) -> int:
    """CLIP-L, OpenCLIP-H and bigG all use 64-wide heads; tiny encoders get one head."""
    return max(1, hidden_size // 64)


def build_text_encoder(config: dict):
    """The transformers class the config names (SDXL's second encoder has a projection), randomly initialised."""
    cls = CLIPTextModelWithProjection if config["architectures"] == ["CLIPTextModelWithProjection"] else CLIPTextModel
    return cls(CLIPTextConfig.from_dict(config))


def assemble(build, config: dict, convert, path: Path, what: str):
    """Build the model without allocating weights, then adopt the converted tensors, strictly."""
    with accelerate.init_empty_weights():
        model = build(config)
    try:
        model.load_state_dict(convert(model), strict=True, assign=True)
    except (RuntimeError, KeyError, ValueError) as error:
        raise UserError(
            f"{path}: the {what} weights do not fit a {_architecture_name(config)} model ({first_line(error)}); "
            "the file is incomplete or an unsupported variant",
            field="model",
        ) from error
    return model


def _architecture_name(config: dict) -> str:
    """A short architecture name for messages."""
    return config.get("_class_name") or config.get("architectures", ["model"])[0]


def load_pretrained(cls, path: Path, subfolder: str):
    """One part of a diffusers folder (`path/subfolder`), offline; a broken one is a one-line UserError."""
    try:
        if issubclass(cls, PreTrainedModel):  # transformers' text encoders: CLIP, T5
            return cls.from_pretrained(str(path / subfolder), local_files_only=True)
        return cls.from_pretrained(
            str(path), subfolder=subfolder, local_files_only=True, variant=_variant(path / subfolder)
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise UserError(
            f"{path / subfolder}: cannot load the weights ({first_line(error)}); the folder is incomplete or corrupt",
            field="model",
        ) from error


def _variant(folder: Path) -> str | None:
    """diffusers only finds `*.fp16.safetensors` when asked for that variant."""
    has_plain = any(folder.glob("diffusion_pytorch_model.safetensors")) or any(
        folder.glob("diffusion_pytorch_model.bin")
    )
    return "fp16" if not has_plain and any(folder.glob("*.fp16.safetensors")) else None


def weights_under(state, prefix: str, keep_prefix: bool = False) -> dict:
    return {
        (key if keep_prefix else key[len(prefix) :]): value for key, value in state.items() if key.startswith(prefix)
    }


def count_children(weights, prefix: str) -> int:
    """How many numbered children `prefix{n}.` exist (layers, resnets, transformer blocks)."""
    return len({key[len(prefix) :].split(".")[0] for key in weights if key.startswith(prefix)})
