"""Progress events the core emits; each face (CLI bar, web UI, log) renders them its own way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Progress:
    phase: str  # e.g. "LoRA", "copier", "difference"
    step: int  # optimizer steps done
    total: int
    loss: float
    loss_average: float
    learning_rate: float
    elapsed: float  # seconds since the phase started
    eta: float  # seconds left, estimated


@dataclass
class Message:
    text: str
    level: str = "info"  # info | warning


@dataclass
class Saved:
    path: str
    step: int


# The kinds of `Written` file.
PREVIEW = "preview"
CSV_LOG = "CSV log"


@dataclass
class Written:
    """A file beside the LoRA that a face lists or shows as it appears: a preview image, a CSV log."""

    path: str
    kind: str  # PREVIEW or CSV_LOG


Event = Progress | Message | Saved | Written
Reporter = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """Default reporter for library use: no output."""
