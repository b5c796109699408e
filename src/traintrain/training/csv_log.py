"""The CSV training log: a block of `key,value` settings rows, then one row per step.

Layout (BEHAVIOR.md): settings rows, then the header `Step,Loss,Loss (average),Learning Rate`.
The settings block and header are written atomically when the log opens; each step row is appended
and flushed at once, so a crash or a reader plotting a running job never sees a partial file.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from traintrain.fileio import write_text_atomic

HEADER = ["Step", "Loss", "Loss (average)", "Learning Rate"]


class CsvLog:
    def __init__(self, path: Path, settings: list[tuple[str, object]]):
        self.path = Path(path)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerows(settings)
        writer.writerow(HEADER)
        write_text_atomic(self.path, text.getvalue())
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, lineterminator="\n")

    def add(self, step: int, loss: float, loss_average: float, learning_rate: float) -> None:
        self._writer.writerow([step, repr(loss), repr(loss_average), repr(learning_rate)])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_csv_log(path: Path) -> tuple[dict[str, str], list[dict[str, float]]]:
    """The settings block and the step rows of a CSV log, for plots and tests."""
    settings, rows, header = {}, [], None
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if header is None and row == HEADER:
                header = row
            elif header is None:
                settings[row[0]] = row[1] if len(row) > 1 else ""
            else:
                rows.append({key: float(value) for key, value in zip(header, row)})
    return settings, rows
