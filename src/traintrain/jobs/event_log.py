"""One job's event log, `{queue}/logs/{id}.jsonl`: what its worker reports, one JSON object a line.

The worker appends every core event as it happens (whole lines only, so a killed worker leaves a
log that reads), plus a "start" line per run and an "end" line with the outcome. The manager tails
it into a `JobView` (what the UI shows of a job, live or afterwards) and back into core events for
a face's printer. A resumed job appends to the same log, so its loss series continues.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from traintrain.fileio import LineAppender
from traintrain.jobs.queue import JobError, JobFiles, JobStatus
from traintrain.training.events import PREVIEW, Event, Message, Progress, Saved, Written


class LossPoint(NamedTuple):
    step: int
    loss: float
    average: float
    learning_rate: float


def event_record(event: Event) -> dict:
    """A core event as one JSON-ready log record."""
    kind = {Progress: "progress", Message: "message", Saved: "saved", Written: "written"}[type(event)]
    return {"event": kind, **dataclasses.asdict(event)}


def record_event(record: dict) -> Event | None:
    """The core event a record holds (None for the worker's own "start" and "end" records)."""
    kinds: dict[str, type] = {"progress": Progress, "message": Message, "saved": Saved, "written": Written}
    kind = kinds.get(record.get("event", ""))
    if kind is None:
        return None
    names = {f.name for f in dataclasses.fields(kind)}
    return kind(**{key: value for key, value in record.items() if key in names})


class EventLogWriter:
    def __init__(self, path: Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.lines = LineAppender(Path(path))

    def write(self, record: dict) -> None:
        self.lines.write_line(json.dumps(record, ensure_ascii=False))

    def close(self) -> None:
        self.lines.close()


@dataclass
class JobView:
    """A job as its log tells it: the newest progress, its messages, files and loss series."""

    status: JobStatus = JobStatus.QUEUED  # running from a start record to the end record
    phase: str = ""
    step: int = 0
    total: int = 0
    loss: float | None = None
    loss_average: float | None = None
    learning_rate: float | None = None
    elapsed: float = 0.0  # seconds of this phase's current run
    eta: float = 0.0
    steps_per_second: float = 0.0
    messages: list[Message] = field(default_factory=list)
    previews: list[str] = field(default_factory=list)  # in the order they were rendered
    loras: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    series: list[LossPoint] = field(default_factory=list)  # of the current phase
    error: JobError | None = None
    state: str | None = None  # the state the job left: to resume from, or a finished run's (save_state)
    _first_step: int = field(default=0, repr=False)  # of the current run of the phase, for the speed

    @property
    def warnings(self) -> list[str]:
        return [message.text for message in self.messages if message.level == "warning"]

    @property
    def files(self) -> JobFiles:
        return JobFiles(list(self.loras), list(self.previews), list(self.logs), self.state)

    def apply(self, record: dict) -> None:
        kind = record.get("event")
        if kind == "start":
            self.status, self.error, self._first_step = JobStatus.RUNNING, None, 0
        elif kind == "end":
            self.status = JobStatus(record["status"])
            self.error = JobError(**record["error"]) if record.get("error") else None
            self.state = record.get("state")
        else:
            event = record_event(record)
            if isinstance(event, Progress):
                self._progress(event)
            elif isinstance(event, Message):
                self.messages.append(event)
            elif isinstance(event, Saved) and event.path not in self.loras:
                self.loras.append(event.path)
            elif isinstance(event, Written):
                (self.previews if event.kind == PREVIEW else self.logs).append(event.path)

    def _progress(self, event: Progress) -> None:
        if event.phase != self.phase:
            self.series = []
        elif self.series and event.step <= self.series[-1].step:  # resumed from an earlier state
            self.series = [point for point in self.series if point.step < event.step]
        if event.phase != self.phase or not self._first_step or event.step < self._first_step:
            self._first_step = event.step
        self.phase, self.step, self.total = event.phase, event.step, event.total
        self.loss, self.loss_average, self.learning_rate = event.loss, event.loss_average, event.learning_rate
        self.elapsed, self.eta = event.elapsed, event.eta
        steps = event.step - self._first_step + 1
        self.steps_per_second = steps / event.elapsed if event.elapsed > 0 else 0.0
        self.series.append(LossPoint(event.step, event.loss, event.loss_average, event.learning_rate))

    def copy(self) -> JobView:
        """A copy another thread may read while this one grows (the lists are copied, their items shared)."""
        return dataclasses.replace(
            self, messages=list(self.messages), previews=list(self.previews), loras=list(self.loras),
            logs=list(self.logs), series=list(self.series),
        )


class EventLogReader:
    """Follows a log as it grows: each `read()` applies the whole lines added since the last one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.view = JobView()
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict]:
        """The new records (a line still being written waits for the next read)."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # not one of the worker's lines (it writes whole lines only)
            if isinstance(record, dict):
                self.view.apply(record)
                records.append(record)
        return records


def read_view(path: Path) -> JobView:
    """The whole log of a job as a view (a finished job's, for its history entry)."""
    reader = EventLogReader(path)
    reader.read()
    return reader.view
