"""What the form shows, read from the config's own field list and the mode registry.

No second list of parameters: the groups are slices of TrainConfig's field order (job inputs,
the seed's mandatory table, the optional rest), a field's widget follows its type, and each mode
shows the fields `fields_for(mode)` gives it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from functools import cache

from traintrain.config import TrainConfig, parameter_types
from traintrain.modes.registry import fields_for, mode_names

FIRST_MANDATORY = "network_type"  # the seed's table 1 starts here in TrainConfig's order ...
FIRST_OPTIONAL = "network_conv_rank"  # ... and table 2 here
FORM_EXCLUDED = ("second_pass",)  # the 2nd-pass panel is built from the other fields
# Pass 2 of Difference trains another network on the same inputs: only training settings differ.
SECOND_PASS_GROUPS = ("mandatory",)
SECOND_PASS_EXCLUDED = ("save_lora_name", "lora_data_directory", "lora_trigger_word")


class Widget(str, enum.Enum):
    TEXT = "text"
    LONG_TEXT = "long_text"
    NUMBER = "number"
    INTEGER = "integer"
    CHECKBOX = "checkbox"
    CHOICE = "choice"
    CHOICES = "choices"  # several of a closed set (blocks)
    AUTO_BOOL = "auto_bool"  # auto / true / false


LONG_TEXT_FIELDS = ("preview_prompts", "train_lr_scheduler_settings", "train_optimizer_settings")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    group: str  # "inputs", "mandatory" or "optional"
    widget: Widget
    help: str
    default: object
    choices: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.name


@cache
def field_specs() -> tuple[FieldSpec, ...]:
    """Every form field, in the config's order, with its group and widget."""
    names = [f.name for f in fields(TrainConfig)]
    first_mandatory, first_optional = names.index(FIRST_MANDATORY), names.index(FIRST_OPTIONAL)
    defaults = TrainConfig().to_json_dict()
    specs = []
    for index, f in enumerate(fields(TrainConfig)):
        if f.name in FORM_EXCLUDED:
            continue
        group = "inputs" if index < first_mandatory else "mandatory" if index < first_optional else "optional"
        widget, choices = _widget(f.name, parameter_types()[f.name], f.metadata)
        specs.append(FieldSpec(f.name, group, widget, f.metadata.get("help", ""), defaults[f.name], choices))
    return tuple(specs)


def spec_named(name: str) -> FieldSpec:
    return next(spec for spec in field_specs() if spec.name == name)


def visible_fields(mode: str) -> set[str]:
    """The fields a mode's form shows."""
    return set(fields_for(mode))


def second_pass_specs() -> tuple[FieldSpec, ...]:
    """The fields of Difference's 2nd-pass panel."""
    return tuple(
        spec for spec in field_specs()
        if spec.group in SECOND_PASS_GROUPS and spec.name not in SECOND_PASS_EXCLUDED
    )


def _widget(name: str, kind, meta) -> tuple[Widget, tuple[str, ...]]:
    if name == "mode":
        return Widget.CHOICE, tuple(mode_names())
    if kind is bool:
        return Widget.CHECKBOX, ()
    if kind == bool | None:
        return Widget.AUTO_BOOL, tuple(meta["choices"])
    if kind is int:
        return Widget.INTEGER, ()
    if kind is float:
        return Widget.NUMBER, ()
    if kind == list[str]:
        return Widget.CHOICES, tuple(meta["choices"])
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return Widget.CHOICE, tuple(member.value for member in kind)
    if name in LONG_TEXT_FIELDS:
        return Widget.LONG_TEXT, ()
    return Widget.TEXT, ()  # text, paths and the image size ("512,512")
