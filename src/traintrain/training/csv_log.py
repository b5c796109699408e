"""The CSV training log: a block of `key,value` settings rows, then one row per step.

Layout (BEHAVIOR.md): settings rows, then the header `Step,Loss,Loss (average),Learning Rate`.
The settings block and header are written atomically when the log opens. Step rows are appended,
one complete line per write call, so a killed process (or a reader plotting a running job) never
meets a partial row and no earlier row is lost. Rows reach the disk itself (fsync) every few
seconds and at the end; after a power cut the last line may be cut short, and the reader skips it.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from traintrain.fileio import LineAppender, write_text_atomic

HEADER = ["Step", "Loss", "Loss (average)", "Learning Rate"]
SYNC_SECONDS = 10.0


def _csv_text(rows) -> str:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue()


class CsvLog:
    def __init__(self, path: Path, settings: list[tuple[str, object]]):
        self.path = Path(path)
        write_text_atomic(self.path, _csv_text([*settings, HEADER]))
        self._file = LineAppender(self.path)
        self._synced = time.monotonic()

    def add(self, step: int, loss: float, loss_average: float, learning_rate: float) -> None:
        self._file.write_line(_csv_text([[step, repr(loss), repr(loss_average), repr(learning_rate)]]))
        if time.monotonic() - self._synced > SYNC_SECONDS:
            self._file.sync()
            self._synced = time.monotonic()

    def close(self) -> None:
        self._file.close()


def read_csv_log(path: Path) -> tuple[dict[str, str], list[dict[str, float]]]:
    """The settings block and the step rows of a CSV log, for plots and tests."""
    text = Path(path).read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]  # a line without its newline was cut short
    settings, rows, header = {}, [], None
    for row in csv.reader(io.StringIO(complete, newline="")):
        if header is None and row == HEADER:
            header = row
        elif header is None:
            settings[row[0]] = row[1] if len(row) > 1 else ""
        else:
            rows.append({key: float(value) for key, value in zip(header, row, strict=False)})
    return settings, rows
