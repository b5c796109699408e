"""Training modes: one typed interface, one registry. A mode is one file under `modes/`.

Each mode file defines a `TrainingMode` subclass and decorates it with `@register`; the registry
imports every module of this package once, so nothing else lists the modes. The job runner asks
the registry for the mode of a config and calls its hooks in order: `check_inputs` (before the
model loads), `check_images` (pre-flight decoding), `planned_files` (names to keep free, disk
room), `train`, then previews of `preview_prompts`. Faces build their mode choice and each mode's
form from `mode_names()` and `fields_for()`.

A mode added outside this package (a plugin, a test) registers the same way once its module is
imported.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from traintrain.errors import UserError

if TYPE_CHECKING:
    from traintrain.config import TrainConfig
    from traintrain.models.components import ModelComponents
    from traintrain.networks.network import AdapterNetwork
    from traintrain.training.context import RunContext


@dataclass
class ModeOutcome:
    """What a mode's training produced: the saved file, its losses, the network that made it."""

    path: Path
    losses: list[float]
    network: AdapterNetwork
    copier: AdapterNetwork | None = None  # Difference: the frozen pass-1 network under `network`
    preview: Path | None = None  # set by the runner when previews are rendered
    extras: dict = field(default_factory=dict)  # mode-specific results (samples, copier losses, ...)


def every(step: int, iterations: int) -> range:
    """The steps below the last one at which something happens every `step` steps."""
    return range(step, iterations, step) if step else range(0)


class TrainingMode(ABC):
    """One way of training an adapter. Subclasses set the class attributes and `train`."""

    name: ClassVar[str]  # as users write it: "LoRA", "iLECO", ...
    summary: ClassVar[str]  # one line for help texts and the UI's mode choice
    # Config fields only this mode (and others that claim them too) uses; fields no mode claims
    # are shared by all modes (network, optimizer, saving, ...). See `fields_for`.
    fields: ClassVar[tuple[str, ...]] = ()
    phases: ClassVar[tuple[str, ...]]  # names of its training phases, as progress events report them
    order: ClassVar[int] = 100  # position in lists of modes (the built-in ones first)
    frozen_passes: ClassVar[int] = 0  # no-grad UNet passes per step besides the trained one (the estimate's)

    def check_inputs(self, config: TrainConfig) -> None:  # noqa: B027 - optional hook, no-op by default
        """Inputs that must exist before a model is loaded (cheap: no image decoding)."""

    def check_images(self, config: TrainConfig) -> None:  # noqa: B027 - optional hook, no-op by default
        """Pre-flight: the mode's images decode (run before the model loads)."""

    def result_config(self, config: TrainConfig) -> TrainConfig:
        """The settings of the phase whose network is the job's result."""
        return config

    def planned_files(self, config: TrainConfig) -> list[str]:
        """File names (in the output folder) of the LoRA files and preview images the job saves."""
        name, result = config.output_name, self.result_config(config)
        files = [f"{name}.safetensors"] + [
            f"{name}_{step}steps.safetensors" for step in every(result.save_per_steps, result.train_iterations)
        ]
        return files + self.preview_files(config, periodic=True)

    def preview_files(self, config: TrainConfig, periodic: bool) -> list[str]:
        if not self.preview_prompts(config):
            return []
        name, result = config.output_name, self.result_config(config)
        files = [f"{name}_preview.png"]
        if periodic and result.preview_every_steps:  # step 0: the "before" picture, rendered ahead of training
            steps = [0, *every(result.preview_every_steps, result.train_iterations)]
            files += [f"{name}_{step}steps_preview.png" for step in steps]
        return files

    def default_preview_prompts(self, config: TrainConfig) -> list[str]:
        """Prompts to preview when the user gives none (none: no previews)."""
        return []

    def preview_prompts(self, config: TrainConfig) -> list[str]:
        """The user's preview prompts (';' or new lines between them), else the mode's defaults."""
        import re

        prompts = [p.strip() for p in re.split(r"[;\n]", config.preview_prompts) if p.strip()]
        return prompts or self.default_preview_prompts(config)

    @abstractmethod
    def train(self, config: TrainConfig, components: ModelComponents, run: RunContext) -> ModeOutcome:
        """Train for exactly the configured iterations and save the result through `run.writer`."""


_MODES: dict[str, TrainingMode] = {}
_discovered = False


def register(mode_class: type[TrainingMode]) -> type[TrainingMode]:
    """Class decorator: make a mode available under its name (a second mode of that name is refused)."""
    key = mode_class.name.lower()
    if key in _MODES and type(_MODES[key]) is not mode_class:
        raise ValueError(f"a training mode named {mode_class.name} is already registered")
    _MODES[key] = mode_class()
    return mode_class


def _discover() -> None:
    """Import every module of this package once: each built-in mode file registers itself."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module("traintrain.modes")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"traintrain.modes.{module.name}")


def all_modes() -> list[TrainingMode]:
    _discover()
    return sorted(_MODES.values(), key=lambda mode: mode.order)


def mode_names() -> list[str]:
    return [mode.name for mode in all_modes()]


def canonical_mode_name(text: str, field_name: str = "mode") -> str:
    """A registered mode's name from user text, matched case-insensitively."""
    _discover()
    mode = _MODES.get(str(text).strip().lower())
    if mode is None:
        raise UserError(f"'{text}' is not one of: {', '.join(mode_names())}", field=field_name)
    return mode.name


def get_mode(name: str) -> TrainingMode:
    return _MODES[canonical_mode_name(name).lower()]


def claimed_fields() -> set[str]:
    """Fields some mode claims as its own; the others are shared by all modes."""
    return {name for mode in all_modes() for name in mode.fields}


def fields_for(name: str) -> list[str]:
    """The config fields a mode uses, in the config's order: the shared ones and its own."""
    from dataclasses import fields as dataclass_fields

    from traintrain.config import TrainConfig

    own, claimed = set(get_mode(name).fields), claimed_fields()
    return [f.name for f in dataclass_fields(TrainConfig) if f.name not in claimed or f.name in own]
