"""The user's own presets: JSON settings files in a presets folder, never overwritten silently.

Shipped presets (this package's folder) and the user's are listed together; a user preset may
not take a shipped one's name, so "LoRA" always means the shipped LoRA preset.
"""

from __future__ import annotations

from pathlib import Path

from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.fileio import check_plain_name
from traintrain.presets import load_preset, preset_names

PRESET_FIELD = "preset"


class PresetStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def user_names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(path.stem for path in self.folder.glob("*.json"))

    def names(self) -> list[str]:
        """Shipped presets first, then the user's."""
        return preset_names() + [name for name in self.user_names() if name not in preset_names()]

    def load(self, name: str) -> TrainConfig:
        name = self._plain(name)
        if name.lower() in {shipped.lower() for shipped in preset_names()}:
            return load_preset(name)
        path = self.folder / f"{name}.json"
        if not path.is_file():
            raise UserError(f"no preset named '{name}'", "choose one from the list", field=PRESET_FIELD)
        return TrainConfig.load_json(path)

    def save(self, name: str, config: TrainConfig, *, overwrite: bool = False) -> Path:
        name = self._plain(name)
        if name.lower() in {shipped.lower() for shipped in preset_names()}:
            raise UserError(f"'{name}' is a shipped preset", "save under another name", field=PRESET_FIELD)
        path = self.folder / f"{name}.json"
        if path.exists() and not overwrite:
            raise UserError(f"a preset named '{name}' exists", "choose another name or tick overwrite",
                            field=PRESET_FIELD)
        self.folder.mkdir(parents=True, exist_ok=True)
        config.save_json(path)
        return path

    def delete(self, name: str) -> None:
        name = self._plain(name)
        path = self.folder / f"{name}.json"
        if not path.is_file():
            raise UserError(f"'{name}' is not one of your presets (shipped presets cannot be deleted)",
                            field=PRESET_FIELD)
        path.unlink()

    def import_file(self, source: Path, *, overwrite: bool = False) -> tuple[str, TrainConfig]:
        """A settings JSON (ours or the original extension's) checked and kept under its file name."""
        source = Path(source)
        config = TrainConfig.load_json(source)
        name = self._plain(source.stem)
        self.save(name, config, overwrite=overwrite)
        return name, config

    @staticmethod
    def _plain(name: str) -> str:
        name = (name or "").strip()
        if not name:
            raise UserError("no preset name given", "type a name", field=PRESET_FIELD)
        try:
            return check_plain_name(name, "preset name")
        except UserError as error:
            raise UserError(error.problem, error.fix, field=PRESET_FIELD) from None
