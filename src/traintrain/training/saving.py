"""Output names and files: safe names, refusal to overwrite, kohya files with metadata."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from traintrain.errors import UserError
from traintrain.networks.kohya_format import build_metadata, save_lora
from traintrain.training.events import Reporter, Saved
from traintrain.training.runtime import DTYPES


def check_save_name(name: str) -> str:
    """A save name is a file name, never a path: nothing may be written outside the output folder."""
    if any(sep in name for sep in ("/", "\\")) or name in (".", "..") or ".." in name or "\0" in name:
        raise UserError(f"save_lora_name: '{name}' must be a plain file name without '/', '\\' or '..'")
    return name


@dataclass
class OutputPlan:
    directory: Path
    name: str

    def path(self, suffix: str = "") -> Path:
        return self.directory / f"{self.name}{suffix}.safetensors"

    def check_free(self, overwrite: bool, suffixes=("",)) -> None:
        """Refuse before any training when a final file already exists and overwriting is off."""
        if overwrite:
            return
        for suffix in suffixes:
            target = self.path(suffix)
            if target.exists():
                raise UserError(
                    f"{target} already exists; choose another save_lora_name or set save_overwrite=true"
                )

    def check_writable(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"output folder {self.directory} cannot be created ({exc.strerror}); choose another --output-dir") from None
        probe = self.directory / f".{self.name}.write-test"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"output folder {self.directory} is not writable ({exc.strerror}); choose another --output-dir") from None


@dataclass
class LoraWriter:
    """Saves a network under the plan's name with the run's metadata."""

    plan: OutputPlan
    config: object
    family_spec: object
    v_prediction: bool
    seed: int
    report: Reporter
    started_at: float = field(default_factory=time.time)
    tag_frequency: dict = field(default_factory=dict)
    num_images: int = 0

    def save(self, network, *, suffix: str = "", steps: int, extra: dict | None = None) -> Path:
        target = self.plan.path(suffix)
        tensors = network.tensors_for_save(DTYPES[self.config.save_precision], self.config.network_strength)
        metadata = build_metadata(
            config=self.config, spec=network.spec, family_spec=self.family_spec, v_prediction=self.v_prediction,
            seed=self.seed, started_at=self.started_at, steps=steps, tag_frequency=self.tag_frequency,
            num_images=self.num_images, extra=extra,
        )
        save_lora(target, tensors, metadata)
        self.report(Saved(str(target), steps))
        return target
