"""The persistent job queue: `{output_dir}/queue/queue.json`, shared by the UI, its workers and the CLI.

Several processes write it (the app, each job's worker, `queue add`), so every change is a
read-modify-write under an exclusive `flock` on `queue.lock`, and the file is replaced atomically.
Before each replace the previous good file is kept as `queue.json.bak`; a missing or damaged
`queue.json` is read from it with a warning (a damaged one is also kept aside), so no job is lost
silently. Entries keep their order: the queued ones run top to bottom.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from traintrain.config import TrainConfig
from traintrain.errors import RESUME_STATE, UserError
from traintrain.fileio import remove_stale_temps, write_text_atomic
from traintrain.jobs.processes import process_alive
from traintrain.training.events import Message, Reporter, ignore

FORMAT = 1
NAME_FIELD = "save_lora_name"


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    STOPPED = "stopped"  # Stop and Save: a file and a state to resume from
    INTERRUPTED = "interrupted"  # the app went away while it ran; resumable from its newest state
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobStatus.STOPPED, JobStatus.INTERRUPTED, JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)
RESUMABLE = (JobStatus.STOPPED, JobStatus.INTERRUPTED)
# Jobs that will still write under their save name: a new job may not share it.
CLAIMS_NAME = (JobStatus.QUEUED, JobStatus.RUNNING, *RESUMABLE)


@dataclass
class JobError:
    """A failed job's error as a face shows it: the UserError's one line and the field it marks."""

    message: str
    field: str | None = None


@dataclass
class JobFiles:
    loras: list[str] = field(default_factory=list)
    previews: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    state: str | None = None


@dataclass
class QueueEntry:
    id: str
    settings: dict  # TrainConfig.to_json_dict()
    status: JobStatus = JobStatus.QUEUED
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    error: JobError | None = None
    files: JobFiles = field(default_factory=JobFiles)
    resume_state: str | None = None  # the state the next run continues from (None = from the start)
    pid: int | None = None
    pid_token: str | None = None  # the worker's start time: tells it from a later process with its pid
    log: str = ""  # the worker's event log, one JSON object per line
    workdir: str = ""  # relative paths in the settings are read from here, as where the job was added
    tokenizer_dir: str | None = None
    lora_dir: str = ""  # where its LoRA files go when not the output folder (a Web-UI's LoRA folder)

    def results_dir(self, output_dir: Path) -> Path:
        return Path(self.lora_dir) if self.lora_dir else Path(output_dir)

    @property
    def name(self) -> str:
        return self.settings.get(NAME_FIELD) or "untitled"

    def config(self) -> TrainConfig:
        return TrainConfig.from_json_dict(self.settings, source=f"queued job {self.id}")

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_json(cls, data: dict) -> QueueEntry:
        values = {key: value for key, value in data.items() if key in _FIELD_NAMES}
        values["status"] = JobStatus(values.get("status", JobStatus.QUEUED.value))
        values["error"] = JobError(**values["error"]) if values.get("error") else None
        values["files"] = JobFiles(**values.get("files") or {})
        return cls(**values)


_FIELD_NAMES = {f.name for f in dataclasses.fields(QueueEntry)}


@dataclass
class QueueState:
    entries: list[QueueEntry] = field(default_factory=list)
    paused: bool = False

    def find(self, job_id: str) -> QueueEntry:
        for entry in self.entries:
            if entry.id == job_id:
                return entry
        raise UserError(f"no job {job_id} in the queue", "pick a job the queue lists")

    def queued(self) -> list[QueueEntry]:
        return [entry for entry in self.entries if entry.status is JobStatus.QUEUED]

    def running(self) -> QueueEntry | None:
        return next((entry for entry in self.entries if entry.status is JobStatus.RUNNING), None)

    def history(self) -> list[QueueEntry]:
        """Finished entries (stopped and interrupted ones included), newest first."""
        done = [entry for entry in self.entries if entry.status in FINISHED]
        return sorted(done, key=lambda entry: entry.finished or entry.created, reverse=True)

    def to_json(self) -> dict:
        return {"format": FORMAT, "paused": self.paused, "entries": [entry.to_json() for entry in self.entries]}

    @classmethod
    def from_json(cls, data: dict) -> QueueState:
        return cls([QueueEntry.from_json(entry) for entry in data["entries"]], bool(data.get("paused", False)))


class JobQueue:
    """The queue of one output folder; every method reads the file afresh (other processes change it).

    `lora_dir`: where the jobs added here write their LoRA files (with their previews and states),
    when not the output folder, which keeps the queue, logs and presets (the Web-UI extension).
    """

    def __init__(self, output_dir: Path, report: Reporter = ignore, lora_dir: Path | None = None):
        self.output_dir = Path(output_dir).resolve()
        self.lora_dir = Path(lora_dir).resolve() if lora_dir else self.output_dir
        self.folder = self.output_dir / "queue"
        self.file = self.folder / "queue.json"
        self.backup = self.folder / "queue.json.bak"
        self.logs = self.folder / "logs"
        self.report = report
        self._warned: set[str] = set()  # each problem with the file is reported once, not at every read

    # ------------------------------------------------------------------ reading
    def state(self) -> QueueState:
        return self._read()[0]

    def get(self, job_id: str) -> QueueEntry:
        return self.state().find(job_id)

    # ------------------------------------------------------------------ adding and editing
    def add(self, config: TrainConfig, *, tokenizer_dir: str | None = None, position: int | None = None) -> QueueEntry:
        """Queue a job after the checks run_job makes first; refuse a save name another job or a file holds."""
        config = check_job(config, self.lora_dir)
        with self._transaction() as state:
            self._check_name_free(state, config)
            entry = QueueEntry(
                _new_id(state), config.to_json_dict(), created=time.time(), workdir=os.getcwd(),
                tokenizer_dir=tokenizer_dir, lora_dir=_lora_dir_of(self),
            )
            entry.log = str(self.logs / f"{entry.id}.jsonl")
            self._insert(state, entry, position)
        return entry

    def edit(self, job_id: str, config: TrainConfig) -> QueueEntry:
        """New settings for a job that has not started."""
        config = check_job(config, self.lora_dir)
        with self._transaction() as state:
            entry = state.find(job_id)
            _require(entry, (JobStatus.QUEUED,), "edited", "duplicate it and edit the copy")
            self._check_name_free(state, config, exclude=entry.id)
            entry.settings = config.to_json_dict()
        return entry

    def duplicate(self, job_id: str) -> QueueEntry:
        """A queued copy of any job, saved as the first free `{name}_2`, `{name}_3`, ..."""
        with self._transaction() as state:
            original = state.find(job_id)
            config = original.config()
            number = 2
            while True:
                candidate = config.with_values(**{NAME_FIELD: f"{original.name}_{number}"})
                try:
                    self._check_name_free(state, check_job(candidate, original.results_dir(self.output_dir)))
                    break
                except UserError as error:
                    if error.field != NAME_FIELD:
                        raise
                    number += 1
            entry = QueueEntry(
                _new_id(state), candidate.to_json_dict(), created=time.time(), workdir=original.workdir,
                tokenizer_dir=original.tokenizer_dir, lora_dir=original.lora_dir,
            )
            entry.log = str(self.logs / f"{entry.id}.jsonl")
            state.entries.append(entry)
        return entry

    def remove(self, job_id: str) -> None:
        with self._transaction() as state:
            entry = state.find(job_id)
            if entry.status is JobStatus.RUNNING:
                raise UserError(f"job {job_id} is training", "stop or cancel it first")
            state.entries.remove(entry)
        self._remove_logs(entry)

    def move(self, job_id: str, position: int) -> None:
        """Put a queued job at `position` (0 = next to run) among the queued jobs."""
        with self._transaction() as state:
            entry = state.find(job_id)
            _require(entry, (JobStatus.QUEUED,), "moved")
            state.entries.remove(entry)
            self._insert(state, entry, position)

    def set_paused(self, paused: bool) -> None:
        """A paused queue starts no new job (the running one goes on)."""
        with self._transaction() as state:
            state.paused = paused

    def resume(self, job_id: str) -> QueueEntry:
        """Queue a stopped or interrupted job first, to continue from its state."""
        with self._transaction() as state:
            entry = state.find(job_id)
            _require(entry, RESUMABLE, "resumed")
            if not entry.resume_state or not Path(entry.resume_state).is_file():
                raise UserError(f"job {job_id} has no saved state to resume from", "requeue it to start over",
                                field=RESUME_STATE)
            state.entries.remove(entry)
            entry.status, entry.error, entry.finished = JobStatus.QUEUED, None, None
            self._insert(state, entry, 0)
        return entry

    def requeue(self, job_id: str) -> QueueEntry:
        """Queue a finished job again, last, to train from the start."""
        with self._transaction() as state:
            entry = state.find(job_id)
            _require(entry, FINISHED, "requeued")
            config = check_job(entry.config(), entry.results_dir(self.output_dir))
            self._check_name_free(state, config, exclude=entry.id)
            state.entries.remove(entry)
            entry.status, entry.error, entry.finished, entry.started = JobStatus.QUEUED, None, None, None
            entry.resume_state, entry.files = None, JobFiles()
            state.entries.append(entry)
        self._remove_logs(entry)
        return entry

    # ------------------------------------------------------------------ running
    def mark_running(self, job_id: str) -> QueueEntry:
        with self._transaction() as state:
            entry = state.find(job_id)
            _require(entry, (JobStatus.QUEUED,), "started")
            entry.status, entry.started, entry.error, entry.pid, entry.pid_token = (
                JobStatus.RUNNING, time.time(), None, None, None)
        return entry

    def record_worker(self, job_id: str, pid: int, token: str | None) -> None:
        with self._transaction() as state:
            entry = state.find(job_id)
            entry.pid, entry.pid_token = pid, token

    def finish(self, job_id: str, status: JobStatus, *, error: JobError | None = None, files: JobFiles | None = None,
               resume_state: str | None = None) -> QueueEntry | None:
        """Record how a running job ended; None (and nothing changed) when it no longer runs."""
        with self._transaction() as state:
            entry = next((e for e in state.entries if e.id == job_id), None)
            if entry is None or entry.status is not JobStatus.RUNNING:
                return None
            entry.status, entry.finished, entry.error, entry.pid, entry.pid_token = (
                status, time.time(), error, None, None)
            if files is not None:
                entry.files = files
            entry.resume_state = resume_state if status in RESUMABLE else None
        return entry

    def recover(self) -> list[QueueEntry]:
        """At start: a job left "running" by a process that is gone becomes "interrupted", with its
        newest state as the point to resume from."""
        recovered = []
        with self._transaction() as state:
            for entry in state.entries:
                if entry.status is JobStatus.RUNNING and not process_alive(entry.pid, entry.pid_token):
                    entry.status, entry.finished, entry.pid, entry.pid_token = (
                        JobStatus.INTERRUPTED, time.time(), None, None)
                    entry.resume_state = self.newest_state(entry)
                    recovered.append(entry)
        for entry in recovered:
            self.report(Message(f"job {entry.id} ({entry.name}) was interrupted when its process ended", "warning"))
        return recovered

    def newest_state(self, entry: QueueEntry) -> str | None:
        """The state of the furthest step this run (or the state it resumed from) wrote."""
        pattern = re.compile(rf"{re.escape(entry.name)}_(\d+)steps\.state")
        candidates = []
        for path in entry.results_dir(self.output_dir).glob(f"{entry.name}_*steps.state"):
            found = pattern.fullmatch(path.name)
            if found and (path.stat().st_mtime >= (entry.started or 0) - 1 or str(path) == entry.resume_state):
                candidates.append((int(found.group(1)), str(path)))
        if entry.resume_state and Path(entry.resume_state).is_file():
            candidates.append((-1, entry.resume_state))
        return max(candidates)[1] if candidates else None

    def worker_output(self, job_id: str) -> Path:
        """Where the worker's own stdout and stderr go (tracebacks of crashes)."""
        return self.logs / f"{job_id}.out"

    # ------------------------------------------------------------------ the file
    def _remove_logs(self, entry: QueueEntry) -> None:
        Path(entry.log).unlink(missing_ok=True)
        self.worker_output(entry.id).unlink(missing_ok=True)

    def _insert(self, state: QueueState, entry: QueueEntry, position: int | None) -> None:
        """Insert before the queued job now at `position`, or after the last one."""
        queued = state.queued()
        if position is None or position >= len(queued):
            state.entries.append(entry)
        else:
            state.entries.insert(state.entries.index(queued[max(position, 0)]), entry)

    def _check_name_free(self, state: QueueState, config: TrainConfig, exclude: str | None = None) -> None:
        name = config.output_name
        for other in state.entries:
            if other.id != exclude and other.status in CLAIMS_NAME and other.name == name:
                raise UserError(f"job {other.id} ({other.status.value}) already saves as '{name}'",
                                "choose another save_lora_name or remove that job", field=NAME_FIELD)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "queue.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when its process dies
            yield

    @contextmanager
    def _transaction(self) -> Iterator[QueueState]:
        with self._locked():
            state, good_text = self._read()
            before = state.to_json()
            yield state
            if state.to_json() != before:
                remove_stale_temps(self.file)  # a writer killed mid-replace; none writes now (we hold the lock)
                if good_text is not None:
                    write_text_atomic(self.backup, good_text)
                write_text_atomic(self.file, json.dumps(state.to_json(), indent=1, ensure_ascii=False) + "\n")

    def _read(self) -> tuple[QueueState, str | None]:
        """The queue and the text of queue.json when it was good (to back up before replacing it)."""
        text = _read_text(self.file)
        if text is not None:
            try:
                return QueueState.from_json(json.loads(text)), text
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                kept = self.file.with_name(f"queue.json.damaged-{hashlib.sha1(text.encode()).hexdigest()[:8]}")
                if not kept.exists():
                    write_text_atomic(kept, text)
                problem = f"the queue file {self.file} is damaged ({error}); it is kept as {kept.name}"
        else:
            problem = f"the queue file {self.file} is missing"
        backup = _read_text(self.backup)
        if backup is None:
            if text is not None:
                self._warn(f"{problem}; no earlier copy exists, so the queue starts empty")
            return QueueState(), None
        try:
            state = QueueState.from_json(json.loads(backup))
        except (ValueError, KeyError, TypeError, AttributeError):
            self._warn(f"{problem}, and so is its copy {self.backup.name}; the queue starts empty")
            return QueueState(), None
        self._warn(f"{problem}; read the previous copy {self.backup.name} instead")
        return state, backup

    def _warn(self, text: str) -> None:
        if text not in self._warned:
            self._warned.add(text)
            self.report(Message(text, "warning"))


def check_job(config: TrainConfig, output_dir: Path) -> TrainConfig:
    """What run_job refuses before loading anything, refused when the job is queued."""
    from traintrain.jobs.runner import check_inputs
    from traintrain.training.saving import OutputPlan, check_save_name

    mode = check_inputs(config)
    if not Path(config.model).exists():
        raise UserError(f"model not found: {config.model}", "give a .safetensors/.ckpt file or a diffusers folder",
                        field="model")
    plan = OutputPlan(Path(output_dir), check_save_name(config.output_name))
    plan.check_free(config.save_overwrite, mode.planned_files(config))
    return config


def _lora_dir_of(queue: JobQueue) -> str:
    return "" if queue.lora_dir == queue.output_dir else str(queue.lora_dir)


def _require(entry: QueueEntry, allowed: tuple[JobStatus, ...], action: str, fix: str = "") -> None:
    if entry.status not in allowed:
        states = " or ".join(status.value for status in allowed)
        raise UserError(f"job {entry.id} is {entry.status.value}; only a job that is {states} can be {action}", fix)


def _new_id(state: QueueState) -> str:
    taken = {entry.id for entry in state.entries}
    while True:
        candidate = uuid.uuid4().hex[:8]
        if candidate not in taken:
            return candidate


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
