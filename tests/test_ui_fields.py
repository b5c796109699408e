"""The form is the config's own field list: groups, widgets, per-mode fields, values both ways."""

import pytest

from traintrain.config import TrainConfig, field_names
from traintrain.modes.registry import fields_for, mode_names
from traintrain.presets import load_preset
from traintrain.ui.fields import Widget, field_specs, second_pass_specs, spec_named, visible_fields


def test_every_config_field_but_the_second_pass_has_a_widget():
    assert [spec.name for spec in field_specs()] == [name for name in field_names() if name != "second_pass"]
    assert {spec.group for spec in field_specs()} == {"inputs", "mandatory", "optional"}
    assert spec_named("model").group == "inputs" and spec_named("network_rank").group == "mandatory"
    assert spec_named("train_snr_gamma").group == "optional"


@pytest.mark.parametrize(("name", "widget"), [
    ("mode", Widget.CHOICE), ("network_type", Widget.CHOICE), ("network_rank", Widget.INTEGER),
    ("train_learning_rate", Widget.NUMBER), ("image_mirroring", Widget.CHECKBOX),
    ("network_blocks", Widget.CHOICES), ("model_v_pred", Widget.AUTO_BOOL), ("model", Widget.TEXT),
    ("preview_prompts", Widget.LONG_TEXT),
])
def test_widgets_follow_the_field_types(name, widget):
    assert spec_named(name).widget is widget


def test_each_mode_shows_the_fields_it_uses():
    for mode in mode_names():
        assert visible_fields(mode) == set(fields_for(mode))
    assert "lora_data_directory" in visible_fields("LoRA") and "lora_data_directory" not in visible_fields("iLECO")
    assert "original_prompt" in visible_fields("iLECO") and "original_prompt" not in visible_fields("LoRA")


def test_the_second_pass_panel_holds_training_settings_only():
    names = {spec.name for spec in second_pass_specs()}
    assert {"network_rank", "train_iterations", "train_learning_rate"} <= names
    assert not names & {"save_lora_name", "lora_data_directory", "model"}


@pytest.mark.parametrize("preset", ["LoRA", "iLECO", "Difference_Use2ndPass", "ADDifT_Style_XL"])
def test_a_preset_survives_the_form_round_trip(preset):
    import gradio as gr

    from traintrain.ui.form import build_form

    with gr.Blocks():
        form = build_form()
    config = load_preset(preset)
    again = form.config_from(*form.values_of(config))
    assert again.to_json_dict() == config.to_json_dict()


def test_a_bad_value_names_its_field():
    import gradio as gr

    from traintrain.errors import UserError
    from traintrain.ui.form import build_form

    with gr.Blocks():
        form = build_form()
    values = form.values_of(TrainConfig())
    values[list(form.components).index("network_rank")] = -3
    with pytest.raises(UserError) as caught:
        form.config_from(*values)
    assert caught.value.field == "network_rank"
    updates = form.field_error_updates(caught.value)
    marked = updates[list(form.components).index("network_rank")]
    assert caught.value.message in marked["info"]


def test_the_model_and_vae_pickers_list_the_hosts_files_and_take_a_bare_name_from_a_preset(tmp_path):
    import gradio as gr

    from traintrain.ui.form import build_form

    vae = tmp_path / "VAE" / "vae-ft-mse-840000.safetensors"
    lists = {"model": [str(tmp_path / "a.safetensors")], "model_vae": [str(vae)]}
    with gr.Blocks():
        form = build_form(lists)
    for name, label in (("model", "Refresh models"), ("model_vae", "Refresh VAEs")):
        assert form.components[name].choices[0][0] == lists[name][0]  # gradio 4+: (label, value) pairs
        assert form.refresh_buttons[name].value == label
    config = TrainConfig.from_json_dict({"vae": "vae-ft-mse-840000.safetensors"}, source="an original preset")
    values = form.values_of(config, lists)
    assert values[list(form.components).index("model_vae")] == str(vae)
    cleared = form.values_of(TrainConfig(), lists)
    cleared[list(form.components).index("model_vae")] = None  # the dropdown emptied
    assert form.config_from(*cleared).model_vae == ""
