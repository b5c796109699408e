"""The training form: one Gradio component per config field, and the values <-> TrainConfig both ways.

Errors come back as UserError with the field's name; `field_error_updates` puts their words at
that field (its info line), as the CLI names the flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.jobs.queue import JobError
from traintrain.models.discovery import resolve_listed
from traintrain.ui import compat
from traintrain.ui.fields import FieldSpec, Widget, field_specs, second_pass_specs, visible_fields

SECOND_PASS_KEY = "2nd pass"
SECOND_PASS_PREFIX = "pass2-"
ERROR_CLASS = "tt-field-error"
COLUMNS = 3
# Fields picked from the host's lists (a free path typed in is taken too), each with a refresh button.
PICKED_FIELDS = {"model": "Refresh models", "model_vae": "Refresh VAEs"}


def element_id(name: str, prefix: str = "") -> str:
    """Stable ids (the hosts save component values by them; tests find fields by them)."""
    return f"tt-{prefix}{name}".replace("_", "-")


def to_widget(spec: FieldSpec, value: Any) -> Any:
    """A config (JSON) value as its widget shows it."""
    if spec.widget is Widget.AUTO_BOOL:
        return "auto" if value is None else ("true" if value else "false")
    if spec.name == "image_size" and isinstance(value, list):
        return ",".join(str(v) for v in value)
    if spec.widget is Widget.CHOICES:
        return list(value or [])
    return value


def from_widget(spec: FieldSpec, value: Any) -> Any:
    """A widget's value as the config reads it (the config checks it)."""
    if spec.widget is Widget.INTEGER and isinstance(value, float) and value.is_integer():
        return int(value)
    if spec.widget is Widget.TEXT and value is None:  # a cleared dropdown
        return ""
    return value


@dataclass
class TrainingForm:
    """The components of the form, in `field_specs()` order, plus the 2nd-pass panel's."""

    components: dict[str, Any] = field(default_factory=dict)
    second_pass: dict[str, Any] = field(default_factory=dict)
    second_pass_panel: Any = None
    refresh_buttons: dict[str, Any] = field(default_factory=dict)  # per PICKED_FIELDS name

    @property
    def specs(self) -> list[FieldSpec]:
        return [spec for spec in field_specs() if spec.name in self.components]

    @property
    def inputs(self) -> list[Any]:
        """Every component whose value makes the config, in a fixed order (see `config_from`)."""
        return list(self.components.values()) + list(self.second_pass.values())

    def config_from(self, *values) -> TrainConfig:
        """The TrainConfig of the form's values (given in `inputs` order); UserError names the field."""
        first = dict(zip(self.components, values[: len(self.components)], strict=True))
        second = dict(zip(self.second_pass, values[len(self.components):], strict=True))
        settings = {spec.name: from_widget(spec, first[spec.name]) for spec in self.specs}
        if settings.get("use_2nd_pass_settings"):
            settings[SECOND_PASS_KEY] = {
                spec.name: from_widget(spec, second[spec.name]) for spec in second_pass_specs()
            }
        return TrainConfig.from_json_dict(settings, source="the form")

    def values_of(self, config: TrainConfig, lists: dict[str, list[str]] | None = None) -> list[Any]:
        """Widget values for `inputs` from a config; the 2nd pass shows pass 1's value where it differs not.

        A picked field's bare file name (the original's presets save the VAE dropdown's name) becomes
        the listed path of that name, from `lists` (field name -> the host's list)."""
        first = config.to_json_dict()
        for name, listed in (lists or {}).items():
            first[name] = resolve_listed(first[name], listed)
        second = {**first, **first.get(SECOND_PASS_KEY, {})}
        return [to_widget(spec, first[spec.name]) for spec in self.specs] + [
            to_widget(spec, second[spec.name]) for spec in second_pass_specs()
        ]

    def visibility_updates(self, mode: str) -> list[Any]:
        """Show only the mode's fields (and the 2nd-pass panel for Difference)."""
        shown = visible_fields(mode)
        return [gr.update(visible=name in shown) for name in self.components] + [
            gr.update(visible="use_2nd_pass_settings" in shown)
        ]

    def field_error_updates(self, error: UserError | JobError | None) -> list[Any]:
        """The error's words at its field (info line, marked), every other field back to its help."""
        updates = []
        for spec in self.specs:
            if error is not None and error.field == spec.name:
                updates.append(compat.update(info=f"⚠ {error.message}", elem_classes=[ERROR_CLASS]))
            else:
                updates.append(compat.update(info=spec.help, elem_classes=[]))
        return updates


def build_form(lists: dict[str, list[str]] | None = None) -> TrainingForm:
    """Create the form's components inside the current Blocks context; `lists` gives the choices of
    PICKED_FIELDS (field name -> the host's list of paths)."""
    lists = lists or {}
    form = TrainingForm()
    specs = {spec.name: spec for spec in field_specs()}
    groups = {"inputs": "Inputs", "mandatory": "Mandatory parameters", "optional": "Optional parameters"}
    for group, title in groups.items():
        group_specs = [spec for spec in specs.values() if spec.group == group]
        per_column = -(-len(group_specs) // COLUMNS)
        with gr.Accordion(title, open=group != "optional", elem_id=f"tt-group-{group}"), gr.Row(equal_height=False):
            for start in range(0, len(group_specs), per_column):
                with gr.Column(min_width=260):
                    for spec in group_specs[start : start + per_column]:
                        form.components[spec.name] = _component(spec, lists)
                        if spec.name in PICKED_FIELDS:
                            form.refresh_buttons[spec.name] = gr.Button(
                                PICKED_FIELDS[spec.name], size="sm", elem_id=f"{element_id(spec.name)}-refresh"
                            )
    with gr.Accordion("2nd pass (Difference)", open=False, visible=False, elem_id="tt-group-second-pass") as panel:
        gr.Markdown("Used when use_2nd_pass_settings is ticked: the difference pass trains with these.")
        with gr.Row():
            for spec in second_pass_specs():
                form.second_pass[spec.name] = _component(spec, lists, prefix=SECOND_PASS_PREFIX)
    form.second_pass_panel = panel
    return form


def _component(spec: FieldSpec, lists: dict[str, list[str]], prefix: str = ""):
    common: dict[str, Any] = dict(label=spec.label, info=spec.help, elem_id=element_id(spec.name, prefix))
    value = to_widget(spec, spec.default)
    if spec.name in PICKED_FIELDS:
        return gr.Dropdown(choices=lists.get(spec.name, []), value=value or None, allow_custom_value=True, **common)
    if spec.widget is Widget.CHECKBOX:
        return gr.Checkbox(value=value, **common)
    if spec.widget in (Widget.CHOICE, Widget.AUTO_BOOL):
        return gr.Dropdown(choices=list(spec.choices), value=value, **common)
    if spec.widget is Widget.CHOICES:
        return gr.CheckboxGroup(choices=list(spec.choices), value=value, **common)
    if spec.widget is Widget.INTEGER:
        return gr.Number(value=value, precision=0, **common)
    if spec.widget is Widget.NUMBER:
        return gr.Number(value=value, **common)
    lines = 3 if spec.widget is Widget.LONG_TEXT else 1
    return gr.Textbox(value=value, lines=lines, max_lines=12 if lines > 1 else 1, **common)
