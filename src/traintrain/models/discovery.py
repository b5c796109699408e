"""What the pickers list under a models folder: checkpoints and diffusers folders, and VAEs.

A user often points `--models-dir` at a Web-UI's `models/` folder, where LoRAs, VAEs and
embeddings sit beside the checkpoints. So the model list skips those folders, and the VAE list
finds what A1111's VAE dropdown finds: files in a `VAE` folder and `*.vae.*` files beside the
checkpoints, plus diffusers VAE folders.
"""

from __future__ import annotations

import json
from pathlib import Path

MODEL_SUFFIXES = (".safetensors", ".ckpt")
VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
MAX_DEPTH = 4  # models folders nest by family or author, rarely deeper
VAE_FOLDER = "vae"
# A Web-UI's models/ subfolders that hold no checkpoints (compared in lower case).
NOT_CHECKPOINT_FOLDERS = frozenset({
    VAE_FOLDER, "lora", "lycoris", "loras", "embeddings", "hypernetworks", "controlnet", "esrgan", "realesrgan",
    "gfpgan", "codeformer", "swinir", "ldsr", "deepbooru", "vae-approx", "clip", "text_encoder", "text_encoders",
})


def list_models(models_dir: Path | str | None) -> list[str]:
    """Paths of the checkpoints (`.safetensors`/`.ckpt`) and diffusers folders (with model_index.json)
    under `models_dir`, sorted; a diffusers folder's own weight files are not listed separately."""
    found: list[str] = []
    for folder in _root(models_dir):
        _walk_models(folder, 0, found)
    return sorted(found)


def list_vaes(models_dir: Path | str | None) -> list[str]:
    """Paths of the VAEs under `models_dir`, sorted: every `.safetensors`/`.pt`/`.ckpt` in a folder
    named VAE, every `*.vae.{safetensors,pt,ckpt}` elsewhere, and diffusers AutoencoderKL folders."""
    found: list[str] = []
    for folder in _root(models_dir):
        _walk_vaes(folder, 0, False, found)
    return sorted(found)


def resolve_listed(value: str, listed: list[str]) -> str:
    """`value` itself when it is a path; a bare name that exactly one listed path ends in, that path."""
    if not value or Path(value).exists() or Path(value).name != value:
        return value
    matches = [path for path in listed if Path(path).name == value]
    return matches[0] if len(matches) == 1 else value


def _root(models_dir: Path | str | None) -> list[Path]:
    if not models_dir or not Path(models_dir).is_dir():
        return []
    return [Path(models_dir)]


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(child for child in folder.iterdir() if not child.name.startswith("."))
    except OSError:
        return []


def _is_vae_file(path: Path) -> bool:
    return path.suffix.lower() in VAE_SUFFIXES and path.stem.lower().endswith(".vae")


def _walk_models(folder: Path, depth: int, found: list[str]) -> None:
    if (folder / "model_index.json").is_file():
        found.append(str(folder))
        return
    for child in _children(folder):
        if child.is_dir():
            if depth < MAX_DEPTH and child.name.lower() not in NOT_CHECKPOINT_FOLDERS:
                _walk_models(child, depth + 1, found)
        elif child.suffix.lower() in MODEL_SUFFIXES and not _is_vae_file(child):
            found.append(str(child))


def _walk_vaes(folder: Path, depth: int, in_vae_folder: bool, found: list[str]) -> None:
    if (folder / "model_index.json").is_file():
        return  # a diffusers model's own vae/ is the model's VAE, not an external one
    if _is_diffusers_vae(folder):
        found.append(str(folder))
        return
    for child in _children(folder):
        if child.is_dir():
            if depth < MAX_DEPTH:
                _walk_vaes(child, depth + 1, in_vae_folder or child.name.lower() == VAE_FOLDER, found)
        elif (in_vae_folder and child.suffix.lower() in VAE_SUFFIXES) or _is_vae_file(child):
            found.append(str(child))


def _is_diffusers_vae(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "AutoencoderKL"
    except (OSError, ValueError, AttributeError):
        return False


def pipeline_class(folder: Path) -> str | None:
    """The `_class_name` in a diffusers folder's model_index.json (`FluxPipeline`, ...): which family's
    loader reads it. None when there is no readable index."""
    index = folder / "model_index.json"
    try:
        name = json.loads(index.read_text()).get("_class_name") if index.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def require_parts(folder: Path, family: str, pipeline: str, parts: tuple[str, ...], listed: str = "") -> None:
    """A family's diffusers folder has each part's config.json; else one UserError names the first missing
    part and the pipeline folder to give (`listed`: its parts as the message names them, default `parts`)."""
    from traintrain.errors import UserError

    for part in parts:
        if not (folder / part / "config.json").is_file():
            raise UserError(f"{folder}: {family} folder without {part}/config.json",
                            f"give a complete {pipeline} folder ({listed or ', '.join(parts)})", field="model")
