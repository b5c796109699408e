"""Records of a run that outlive it: CSV log, TensorBoard events, the settings archived as JSON.

They are fed by the same progress events the faces render, so every mode is logged without
knowing about logs. Files (all under the output folder, one timestamp per job):
`logs/{name}_{YYYYMMDD-HHMMSS}.csv` (a later phase of the same job, e.g. Difference's second pass,
adds `_{phase}` after the name), `logs/tensorboard/{name}/` and `json/{YYYYMMDD}/{name}_{HHMMSS}.json`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from traintrain.errors import UserError
from traintrain.training.csv_log import CsvLog
from traintrain.training.events import CSV_LOG, Event, Message, Progress, Reporter, Written

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


def check_logging(config) -> None:
    if config.logging_tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise UserError("logging_tensorboard needs the package 'tensorboard': pip install tensorboard") from None


class RunLogs:
    """A reporter that writes the logs and passes every event on to the face's reporter."""

    def __init__(self, config, output_dir: Path, seed: int, report: Reporter, now: float | None = None):
        self.config, self.seed, self.report = config, seed, report
        self.clock = time.localtime(time.time() if now is None else now)
        self.folder = Path(output_dir) / "logs"
        self.csv: CsvLog | None = None
        self.tensorboard: SummaryWriter | None = None
        self.phases: list[str] = []
        if config.save_as_json:
            self._archive_settings(Path(output_dir))

    def __call__(self, event: Event) -> None:
        if isinstance(event, Progress):
            self._log_step(event)
        self.report(event)

    def _archive_settings(self, output_dir: Path) -> None:
        day, moment = time.strftime("%Y%m%d", self.clock), time.strftime("%H%M%S", self.clock)
        path = _unused(output_dir / "json" / day / f"{self.config.output_name}_{moment}.json")
        self.config.save_json(path)
        self.report(Message(f"settings saved to {path}"))

    def _log_step(self, event: Progress) -> None:
        if event.step == 1 or not self.phases or event.phase != self.phases[-1]:
            self._open(event)
        if self.csv:
            self.csv.add(event.step, event.loss, event.loss_average, event.learning_rate)
        if self.tensorboard:
            for tag, value in (
                ("loss", event.loss),
                ("loss_average", event.loss_average),
                ("learning_rate", event.learning_rate),
            ):
                self.tensorboard.add_scalar(f"{event.phase}/{tag}", value, event.step)
        if event.step == event.total:
            self._close()

    def _open(self, event: Progress) -> None:
        self._close()
        name = self.config.output_name + (f"_{event.phase}" if self.phases else "")
        self.phases.append(event.phase)
        if self.config.logging_save_csv:
            path = _unused(self.folder / f"{name}_{time.strftime('%Y%m%d-%H%M%S', self.clock)}.csv")
            self.csv = CsvLog(path, self._settings(event))
            self.report(Written(str(path), CSV_LOG))
        if self.config.logging_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(self.folder / "tensorboard" / self.config.output_name))

    def _settings(self, event: Progress) -> list[tuple[str, object]]:
        c = self.config
        return [
            ("mode", c.mode), ("phase", event.phase), ("model", c.model), ("save_lora_name", c.output_name),
            ("started", time.strftime("%Y-%m-%d %H:%M:%S", self.clock)), ("seed", self.seed),
            ("network_type", c.network_type.value), ("network_rank", c.network_rank),
            ("network_alpha", c.network_alpha), ("train_iterations", event.total),
            ("train_batch_size", c.train_batch_size), ("train_learning_rate", c.train_learning_rate),
            ("train_optimizer", c.train_optimizer.value), ("train_optimizer_settings", c.train_optimizer_settings),
            ("train_lr_scheduler_settings", c.train_lr_scheduler_settings),
            ("train_lr_scheduler", c.train_lr_scheduler.value), ("train_loss_function", c.train_loss_function.value),
        ]

    def _close(self) -> None:
        if self.csv:
            self.csv.close()
            self.csv = None
        if self.tensorboard:
            self.tensorboard.close()
            self.tensorboard = None


def _unused(path: Path) -> Path:
    """Two jobs started in the same second keep both records: the later gets `-2`, `-3`, ..."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate
