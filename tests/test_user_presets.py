"""The user's presets: saved beside the shipped ones, never overwritten silently, imported from JSON."""

import json

import pytest

from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.presets import preset_names
from traintrain.presets.user_store import PresetStore


def test_save_load_delete(tmp_path):
    store = PresetStore(tmp_path / "presets")
    config = TrainConfig(network_rank=7, save_lora_name="mine")
    store.save("mine", config)
    assert store.names() == preset_names() + ["mine"]
    assert store.load("mine").network_rank == 7
    with pytest.raises(UserError, match="exists"):
        store.save("mine", TrainConfig(network_rank=3))
    assert store.load("mine").network_rank == 7  # untouched
    store.save("mine", TrainConfig(network_rank=3), overwrite=True)
    assert store.load("mine").network_rank == 3
    store.delete("mine")
    assert store.names() == preset_names()


def test_shipped_presets_cannot_be_replaced_or_deleted(tmp_path):
    store = PresetStore(tmp_path)
    with pytest.raises(UserError, match="shipped preset"):
        store.save("lora", TrainConfig())
    with pytest.raises(UserError, match="not one of your presets"):
        store.delete("LoRA")
    assert store.load("LoRA").mode == "LoRA"


def test_names_are_plain_file_names(tmp_path):
    store = PresetStore(tmp_path / "presets")
    for bad in ("../escape", "a/b", ""):
        with pytest.raises(UserError) as caught:
            store.save(bad, TrainConfig())
        assert caught.value.field == "preset"
    assert not (tmp_path / "escape.json").exists()


def test_import_of_the_original_extensions_settings(tmp_path):
    original = tmp_path / "old_style.json"
    original.write_text(json.dumps({"mode": "LoRA", "network_rank": 4, "image_size(height, width)": [512, 768],
                                    "vae": "None", "model_v_pred": False}))
    store = PresetStore(tmp_path / "presets")
    name, config = store.import_file(original)
    assert name == "old_style" and config.image_size == [512, 768] and config.model_v_pred is False
    assert store.load("old_style").network_rank == 4
    with pytest.raises(UserError, match="exists"):
        store.import_file(original)
