"""The committed toy-world model (`toyworld/files/`): checked against its recipe, loaded, written out.

`traintrain tiny-model --toy-world` hands a user the same model the tests and the demo use: the
single file and its tokenizer folder as committed, or a diffusers folder converted from them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from traintrain.data.latent_cache import file_digest
from traintrain.errors import UserError
from traintrain.fileio import atomic_folder, atomic_path
from traintrain.models.components import ModelComponents
from traintrain.toyworld.model import FILES, MODEL_NAME, read_record


def toy_model_path() -> Path:
    return FILES / MODEL_NAME


def tokenizer_folder(model: Path) -> Path:
    return model.with_name(model.stem + ".tokenizer")


def check_files(folder: Path = FILES) -> list[str]:
    """The committed files whose checksum differs from the recipe's record (none when intact)."""
    record = read_record(folder)
    return [name for name, digest in record["sha256"].items()
            if not (folder / name).is_file() or file_digest(folder / name) != digest]


def load_toy_model() -> ModelComponents:
    """The toy-world model, loaded as any single file is (float32), frozen and in eval mode."""
    from traintrain.models.loading import load_model

    components = load_model(str(toy_model_path()))
    for part in (components.unet, components.vae, *components.text_encoders):
        part.eval().requires_grad_(False)
    return components


def write_toy_model(fmt: str, out: Path) -> Path:
    """The toy-world model at `out`: "single-file" (with `X.tokenizer/` beside it) or "diffusers"."""
    from traintrain.models.tiny import FORMATS, write_tiny_model

    if fmt not in FORMATS:
        raise UserError(f"unknown model format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "diffusers":
        return write_tiny_model("sd1", fmt, out, components=load_toy_model())
    for target in (out, tokenizer_folder(out)):
        if target.exists():
            raise UserError(f"{target}: already exists; choose another output path or delete it first")
    with atomic_folder(tokenizer_folder(out)) as tmp:
        shutil.copytree(tokenizer_folder(toy_model_path()), tmp, dirs_exist_ok=True)
    with atomic_path(out) as tmp:
        shutil.copyfile(toy_model_path(), tmp)
    return out
