"""Output names and files: safe names, refusal to overwrite, room on disk, kohya files with metadata."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from traintrain.choices import NetworkType
from traintrain.errors import OUTPUT_DIR, UserError
from traintrain.fileio import check_plain_name, remove_stale_temps
from traintrain.networks.kohya_format import build_metadata, save_lora
from traintrain.networks.lokr import factorization
from traintrain.training.events import Reporter, Saved
from traintrain.training.runtime import DTYPES

if TYPE_CHECKING:
    from traintrain.config import TrainConfig
    from traintrain.models.families import FamilySpec

BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "bf16": 2}
HEADER_BYTES_PER_TENSOR = 512  # safetensors JSON header entry, generously
METADATA_BYTES = 1 << 20  # ss_* metadata, tag frequencies included


def check_save_name(name: str) -> str:
    """A save name is a file name, never a path: nothing may be written outside the output folder."""
    return check_plain_name(name, "save_lora_name")


@dataclass
class OutputPlan:
    directory: Path
    name: str

    def path(self, suffix: str = "") -> Path:
        return self.directory / check_plain_name(f"{self.name}{suffix}.safetensors", "save name")

    def check_free(self, overwrite: bool, file_names=None) -> None:
        """Refuse before any training when a file the job will write exists and overwriting is off."""
        if overwrite:
            return
        for file_name in file_names or [self.path().name]:
            target = self.directory / check_plain_name(file_name, "save name")
            if target.exists():
                raise UserError(
                    f"{target} already exists", "choose another save_lora_name or set save_overwrite=true",
                    field="save_lora_name",
                )

    def check_writable(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"output folder {self.directory} cannot be created ({exc.strerror})",
                "choose another output folder",
                field=OUTPUT_DIR,
            ) from None
        try:
            with tempfile.TemporaryFile(dir=self.directory) as probe:  # never visible, even if killed
                probe.write(b"x")
        except OSError as exc:
            raise UserError(
                f"output folder {self.directory} is not writable ({exc.strerror})",
                "choose another output folder",
                field=OUTPUT_DIR,
            ) from None

    def remove_stale_temps(self, file_names) -> None:
        """Temporary files of these names are left-overs of a killed run: the job owns these names."""
        for file_name in file_names:
            remove_stale_temps(self.directory / file_name)


def lora_size_bound(weight_shapes, config) -> int:
    """Bytes a saved network of this config can take at most, from the model's weight shapes.

    Every weight the network type can target counts (lierla: linear and 1x1 conv; the others every
    conv too), as if all blocks were trained: never less than the real file, and within a small
    factor of it (about 1.5-2x on the tiny models).
    """
    kind = config.network_type
    values = tensors = 0
    for shape in weight_shapes:
        if len(shape) < 2:
            continue
        kernel = math.prod(shape[2:])
        if kernel > 1 and kind is NetworkType.LIERLA:
            continue
        rank = (config.network_conv_rank or config.network_rank) if kernel > 1 else config.network_rank
        values += _module_values(kind, rank, shape[0], shape[1], kernel)
        tensors += 5
    return values * BYTES_PER_VALUE[config.save_precision.value] + tensors * HEADER_BYTES_PER_TENSOR + METADATA_BYTES


def _module_values(kind: NetworkType, rank: int, fan_out: int, channels_in: int, kernel: int) -> int:
    """Saved values of one module: LoRA's down/up pair, LoHa's two pairs, LoKr's Kronecker factors."""
    if kind is NetworkType.LOKR:
        (a, b), (c, d) = factorization(fan_out), factorization(channels_in)
        w2 = b * d * kernel if rank >= max(b, d) / 2 else rank * (b + d * kernel)
        return a * c + w2 + 1
    pairs = 2 if kind is NetworkType.LOHA else 1
    return pairs * rank * (channels_in * kernel + fan_out) + 1


@dataclass
class LoraWriter:
    """Saves a network under the plan's name with the run's metadata."""

    plan: OutputPlan
    config: TrainConfig
    family_spec: FamilySpec
    v_prediction: bool
    seed: int
    report: Reporter
    started_at: float = field(default_factory=time.time)
    tag_frequency: dict = field(default_factory=dict)
    num_images: int = 0
    # The result's name suffix: "" normally, "_{N}steps" when a finished run is continued to N steps
    # (its first result keeps its name, and the file at N steps is named like a periodic save).
    final_suffix: str = ""
    writes: bool = True  # False in the other processes of a data-parallel run: only the main one writes

    def save(self, network, *, suffix: str = "", steps: int, extra: dict | None = None) -> Path:
        target = self.plan.path(suffix or self.final_suffix)
        if not self.writes:
            return target
        tensors = network.tensors_for_save(DTYPES[self.config.save_precision], self.config.network_strength)
        metadata = build_metadata(
            config=self.config,
            spec=network.spec,
            family_spec=self.family_spec,
            v_prediction=self.v_prediction,
            seed=self.seed,
            started_at=self.started_at,
            steps=steps,
            tag_frequency=self.tag_frequency,
            num_images=self.num_images,
            extra=extra,
        )
        save_lora(target, tensors, metadata)
        self.report(Saved(str(target), steps))
        return target
