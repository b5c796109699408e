"""Shipped presets: JSON files in this folder, looked up by name (case-insensitive)."""

from __future__ import annotations

from pathlib import Path

from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.fileio import check_plain_name

PRESET_DIR = Path(__file__).parent


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> TrainConfig:
    """A preset is looked up by name among the files here, never opened as a path."""
    name = check_plain_name(name.strip(), "preset name")
    for stem in preset_names():
        if stem.lower() == name.lower():
            return TrainConfig.load_json(PRESET_DIR / f"{stem}.json")
    raise UserError(f"unknown preset '{name}'; choose one of: {', '.join(preset_names())}")
