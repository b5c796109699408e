"""Loss logs read back for plots: the CLI's PNG and the web UI's live chart share these readers.

A log is read while its run may still be writing it (the last line can be cut short, a run that
just started has no step yet), so reading never fails on those. A browser chart gets a bounded
number of points: `downsample` keeps each bucket's lowest and highest loss, so spikes stay visible.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from traintrain.errors import OUTPUT_DIR, UserError
from traintrain.training.csv_log import HEADER

BROWSER_POINTS = 2000  # enough for any chart width, few enough for a page to redraw every second


@dataclass
class LossLog:
    """One CSV log: its settings rows and, per logged step, the four columns of its step rows."""

    settings: dict[str, str] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    loss_average: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)

    @property
    def run_name(self) -> str:
        """The run's save name and phase as the log records them, e.g. "job (LoRA)"."""
        name, phase = self.settings.get("save_lora_name", ""), self.settings.get("phase", "")
        return f"{name} ({phase})" if name and phase else name or phase

    def rows(self, indices: list[int]) -> LossLog:
        """The log restricted to the step rows at `indices` (in that order)."""
        return LossLog(
            dict(self.settings),
            [self.steps[i] for i in indices],
            [self.loss[i] for i in indices],
            [self.loss_average[i] for i in indices],
            [self.learning_rate[i] for i in indices],
        )


def logs_folder(output_dir: Path) -> Path:
    """Where a job's CSV logs are (see run_logs)."""
    return Path(output_dir) / "logs"


def loss_logs(logs_dir: Path) -> list[Path]:
    """The CSV logs in a logs folder, newest first (by modification time)."""
    folder = Path(logs_dir)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("*.csv") if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True)


def latest_loss_log(logs_dir: Path) -> Path:
    logs = loss_logs(logs_dir)
    if not logs:
        raise UserError(
            f"no CSV loss log in {logs_dir}",
            "train with logging_save_csv on (the default), or give the CSV file to plot",
            field=OUTPUT_DIR,
        )
    return logs[0]


def find_loss_log(choice: str | None, logs_dir: Path) -> Path:
    """The log a user chose: empty = the latest; a path to a file; or the name of a log in `logs_dir`."""
    if not choice:
        return latest_loss_log(logs_dir)
    path = Path(choice)
    if path.is_file():
        return path
    plain = "/" not in choice and "\\" not in choice and ".." not in choice
    for candidate in (Path(logs_dir) / choice, Path(logs_dir) / f"{choice}.csv") if plain else ():
        if candidate.is_file():
            return candidate
    raise UserError(f"loss log {choice} not found", f"give a CSV file, or the name of a log in {logs_dir}")


def read_loss_log(path: Path) -> LossLog:
    """A CSV log written by CsvLog; an unfinished last line (a running or killed job) is left out."""
    path = Path(path)
    not_a_log = UserError(
        f"{path} is not a loss log of TrainTrain",
        f"give a CSV written with logging_save_csv (its step rows start with the header {','.join(HEADER)})",
    )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise not_a_log from None
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UserError(f"loss log {path} not found", "give a CSV file from the logs folder") from None
    complete = text[: text.rfind("\n") + 1]
    log, header_seen = LossLog(), False
    for row in csv.reader(io.StringIO(complete, newline="")):
        if not header_seen:
            header_seen = row == HEADER
            if not header_seen and row:
                log.settings[row[0]] = row[1] if len(row) > 1 else ""
            continue
        try:
            step, loss, average, learning_rate = (float(value) for value in row)
        except ValueError:
            raise not_a_log from None
        log.steps.append(int(step))
        log.loss.append(loss)
        log.loss_average.append(average)
        log.learning_rate.append(learning_rate)
    if not header_seen:
        raise not_a_log
    return log


def downsample(log: LossLog, max_points: int = BROWSER_POINTS) -> LossLog:
    """At most `max_points` step rows (at least 2): the first, the last, and in between, for each of
    equal buckets of steps, the rows of its lowest and highest loss."""
    count = len(log.steps)
    if count <= max_points:
        return log
    buckets = max(0, (max_points - 2) // 2)
    inner = count - 2
    kept = [0]
    for bucket in range(buckets):
        first, end = 1 + bucket * inner // buckets, 1 + (bucket + 1) * inner // buckets
        finite = [i for i in range(first, end) if math.isfinite(log.loss[i])]
        if not finite:  # a bucket of skipped (non-finite) steps shows as one gap
            kept.append(first)
            continue
        extremes = {min(finite, key=log.loss.__getitem__), max(finite, key=log.loss.__getitem__)}
        kept.extend(sorted(extremes))
    kept.append(count - 1)
    return log.rows(kept)
