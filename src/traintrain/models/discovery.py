"""The models a user can pick: single-file checkpoints and diffusers folders under a models folder."""

from __future__ import annotations

from pathlib import Path

MODEL_SUFFIXES = (".safetensors", ".ckpt")
MAX_DEPTH = 4  # models folders nest by family or author, rarely deeper


def list_models(models_dir: Path | str | None) -> list[str]:
    """Paths of the checkpoints (`.safetensors`/`.ckpt`) and diffusers folders (with model_index.json)
    under `models_dir`, sorted; a diffusers folder's own weight files are not listed separately."""
    if not models_dir:
        return []
    root = Path(models_dir)
    if not root.is_dir():
        return []
    found: list[str] = []
    _walk(root, 0, found)
    return sorted(found)


def _walk(folder: Path, depth: int, found: list[str]) -> None:
    if (folder / "model_index.json").is_file():
        found.append(str(folder))
        return
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return
    for child in children:
        if child.name.startswith("."):
            continue
        if child.is_dir() and depth < MAX_DEPTH:
            _walk(child, depth + 1, found)
        elif child.is_file() and child.suffix.lower() in MODEL_SUFFIXES:
            found.append(str(child))
