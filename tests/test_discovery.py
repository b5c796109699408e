"""The model picker lists checkpoints and diffusers folders under the models folder."""

from traintrain.models.discovery import list_models
from traintrain.models.tiny import write_tiny_model


def test_single_files_and_diffusers_folders(tmp_path):
    single = write_tiny_model("sd1", "single-file", tmp_path / "sd1" / "tiny.safetensors")
    folder = write_tiny_model("sd1", "diffusers", tmp_path / "diffusers" / "tiny")
    (tmp_path / "old.ckpt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.safetensors").write_bytes(b"")
    assert list_models(tmp_path) == sorted([str(single), str(folder), str(tmp_path / "old.ckpt")])


def test_no_folder_lists_nothing(tmp_path):
    assert list_models(None) == [] and list_models(tmp_path / "missing") == []
