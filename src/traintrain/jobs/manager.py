"""The job manager a face holds: it runs the queue one job at a time, each in a worker process.

A background thread starts the next queued job whenever none runs and the queue is not paused, and
follows the running job's event log; a face polls `snapshot()` (the UI) or receives the job's
events through `report` (the CLI's progress bar). A job cannot take the face down: it runs in
`traintrain.jobs.worker`, in a process group of its own. One manager runs a queue at a time (an
flock on `queue/manager.lock`); a new one first marks jobs whose process is gone "interrupted".
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from traintrain.config import TrainConfig
from traintrain.errors import OUTPUT_DIR, UserError
from traintrain.fileio import remove_stale_temps
from traintrain.jobs.event_log import EventLogReader, JobView, read_view, record_event
from traintrain.jobs.processes import process_alive, process_token
from traintrain.jobs.queue import JobError, JobQueue, JobStatus, QueueEntry
from traintrain.jobs.worker import STANDBY
from traintrain.training.events import Event, Message, Reporter, ignore

POLL_SECONDS = 0.5
EXIT_GRACE_SECONDS = 10  # a worker that has recorded its outcome is only closing its files
NOTICES_KEPT = 50


class JobHooks(Protocol):
    """What a host does around each job's process: the Web-UI takes its GPU lock and frees its model
    before, and reloads the model and releases the lock after, however the job ended."""

    def before_job(self) -> None: ...

    def after_job(self) -> None: ...


class NoHooks:
    """Standalone: nothing else shares the GPU."""

    def before_job(self) -> None:
        pass

    def after_job(self) -> None:
        pass


@dataclass
class RunningJob:
    entry: QueueEntry
    view: JobView  # phase, step/total, loss, lr, speed, ETA, messages, previews, the loss series


@dataclass
class ManagerSnapshot:
    """What a face shows: the running job, the queue in order, the history newest first."""

    running: RunningJob | None
    queued: list[QueueEntry]
    history: list[QueueEntry]
    paused: bool
    notices: list[str] = field(default_factory=list)  # the manager's own messages (recovered jobs, ...)


@dataclass
class _Worker:
    entry: QueueEntry
    process: subprocess.Popen | None  # None: a worker of an earlier manager, still finishing
    pid: int
    output: IO[bytes] | None = None
    cancelled: bool = False
    hooked: bool = False  # before_job ran for it: after_job runs when it ends


class JobManager:
    def __init__(self, output_dir: Path, *, report: Reporter = ignore, poll_seconds: float = POLL_SECONDS,
                 spare_worker: bool = True, lora_dir: Path | None = None, hooks: JobHooks | None = None):
        """`spare_worker`: keep one worker process waiting with the training code imported, so that
        a job starts at once instead of after the seconds of importing torch and diffusers.
        `lora_dir`: where jobs write their LoRA files, if not `output_dir` (see JobQueue); `hooks` run
        around each job this manager starts."""
        self.report = report
        self.hooks = hooks or NoHooks()
        self._spare_enabled = spare_worker
        self._spare: subprocess.Popen | None = None
        self.notices: list[str] = []
        self.queue = JobQueue(Path(output_dir), report=self._notice, lora_dir=lora_dir)
        self._manager_lock = _hold_manager_lock(self.queue)
        self.poll_seconds = poll_seconds
        self._lock = threading.RLock()
        self._worker: _Worker | None = None
        self._launching: QueueEntry | None = None  # marked running, waiting for the host's GPU
        self._reader: EventLogReader | None = None
        self._starting = True  # False: the running job ends, no new one starts (a face is closing)
        self._closed = threading.Event()
        self._wake = threading.Event()
        self.queue.recover()
        with self._lock:
            self._prepare_spare()
        self._thread = threading.Thread(target=self._run, daemon=True, name="traintrain-jobs")
        self._thread.start()

    # ------------------------------------------------------------------ jobs
    def start(self, config: TrainConfig, *, tokenizer_dir: str | None = None) -> QueueEntry:
        """Train this job now; while another trains, a UserError offers the queue."""
        with self._lock:
            self._forget_ended_worker(recorded_is_enough=True)
            running = self._running_entry()
            if running is not None:
                raise UserError(f"job {running.id} ({running.name}) is training",
                                "add this job to the queue: it starts when the current one ends")
            entry = self._claim(self.queue.add(config, tokenizer_dir=tokenizer_dir, position=0))
        return self._launch(entry)

    def enqueue(self, config: TrainConfig, *, tokenizer_dir: str | None = None) -> QueueEntry:
        entry = self.queue.add(config, tokenizer_dir=tokenizer_dir)
        self._wake.set()
        return entry

    def stop_and_save(self) -> bool:
        """Ask the running job to save a file and a state after its current step; False if none runs."""
        with self._lock:
            worker = self._worker
            if worker is None:
                return False
            _signal(worker.pid, signal.SIGTERM, group=False)
            return True

    def cancel(self) -> bool:
        """End the running job at once without saving; every output is written atomically, and the
        temporary files it was writing are removed. False if none runs."""
        with self._lock:
            worker = self._worker
            if worker is None:
                return False
            worker.cancelled = True
            _signal(worker.pid, signal.SIGKILL, group=True)
            if worker.process is not None:
                worker.process.wait()
            else:
                while process_alive(worker.pid, worker.entry.pid_token):
                    time.sleep(0.05)
            self._worker_ended()
            return True

    def resume(self, job_id: str) -> QueueEntry:
        return self._changed(self.queue.resume(job_id))

    def requeue(self, job_id: str) -> QueueEntry:
        return self._changed(self.queue.requeue(job_id))

    def remove(self, job_id: str) -> None:
        self.queue.remove(job_id)

    def move(self, job_id: str, position: int) -> None:
        self.queue.move(job_id, position)

    def edit(self, job_id: str, config: TrainConfig) -> QueueEntry:
        return self.queue.edit(job_id, config)

    def duplicate(self, job_id: str) -> QueueEntry:
        return self._changed(self.queue.duplicate(job_id))

    def pause(self, paused: bool = True) -> None:
        self.queue.set_paused(paused)
        self._wake.set()

    # ------------------------------------------------------------------ looking
    def snapshot(self) -> ManagerSnapshot:
        with self._lock:
            self._follow_log()
            state = self.queue.state()
            running = state.running()
            job = None
            if running is not None:
                job = RunningJob(running, self._reader.view.copy() if self._reader else read_view(Path(running.log)))
            return ManagerSnapshot(
                job,
                state.queued(), state.history(), state.paused, list(self.notices),
            )

    def view(self, job_id: str) -> JobView:
        """Any job's view from its log: a finished one's messages, previews, files and loss series."""
        return read_view(Path(self.queue.get(job_id).log))

    def busy(self) -> bool:
        with self._lock:
            return self._running_entry() is not None

    def wait_until_idle(self, timeout: float | None = None) -> bool:
        """Block until no job runs and none would start (the queue is empty or paused)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                state = self.queue.state()
                if self._running_entry() is None and (not state.queued() or state.paused or not self._starting):
                    return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(self.poll_seconds / 2)

    def hold(self) -> None:
        """Start no further job in this manager (the running one goes on); the queue file is not paused."""
        self._starting = False

    def close(self, timeout: float = 120.0) -> None:
        """Stop the thread. A job still running is stopped and saved, and recorded as interrupted."""
        self._starting = False
        with self._lock:
            self._close_spare()
            worker = self._worker
            if worker is not None and worker.process is not None and worker.process.stdin:
                worker.process.stdin.close()  # the worker sees its parent go, saves and ends
        if worker is not None and worker.process is not None:
            try:
                worker.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.cancel()
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=10)
        with self._lock:
            if self._worker is not None:
                self._worker_ended()
        self._manager_lock.close()

    def __enter__(self) -> JobManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self._tick()
            except Exception as error:  # the loop must outlive any one problem (a full disk, a bad file)
                self._notice(Message(f"the job manager met an error: {type(error).__name__}: {error}", "warning"))
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def _tick(self) -> None:
        claimed = self._next_job()
        if claimed is not None:
            self._launch(claimed)

    def _next_job(self) -> QueueEntry | None:
        """Follow the running job; when none runs, claim the next queued one for `_launch`."""
        with self._lock:
            self._follow_log()
            if self._launching is not None:
                return None
            if self._worker is not None:
                self._forget_ended_worker()
                return None
            running = self.queue.state().running()
            if running is not None:  # left by an earlier manager: follow it while it finishes
                if process_alive(running.pid, running.pid_token) and running.pid:
                    self._worker = _Worker(running, None, running.pid)
                    self._reader = EventLogReader(Path(running.log))
                else:
                    self.queue.recover()
                return None
            state = self.queue.state()
            if self._starting and not state.paused and state.queued():
                return self._claim(state.queued()[0])
            return None

    def _forget_ended_worker(self, *, recorded_is_enough: bool = False) -> None:
        """Let go of the worker once its job has ended. `recorded_is_enough`: a job whose outcome is
        already in the queue file counts as ended while its process exits (a page shows the outcome
        from the file, so Start must not call that job still training)."""
        worker = self._worker
        if worker is None:
            return
        ended = worker.process.poll() is not None if worker.process else not process_alive(
            worker.pid, worker.entry.pid_token)
        if not ended and recorded_is_enough and worker.process is not None \
                and self.queue.get(worker.entry.id).status is not JobStatus.RUNNING:
            try:
                worker.process.wait(EXIT_GRACE_SECONDS)
                ended = True
            except subprocess.TimeoutExpired:
                pass
        if ended:
            self._worker_ended()

    def _claim(self, entry: QueueEntry) -> QueueEntry:
        """Mark the job running and keep the manager for it until `_launch` has started its process."""
        entry = self.queue.mark_running(entry.id)
        self._launching, self._reader = entry, EventLogReader(Path(entry.log))
        return entry

    def _launch(self, entry: QueueEntry) -> QueueEntry:
        """Start a claimed job's process. The host's hooks run without the manager's lock: a Web-UI's
        GPU lock can be held by a txt2img for minutes, and pages must go on polling meanwhile."""
        try:
            self.hooks.before_job()
        except Exception as error:
            with self._lock:
                self._launching = None
                self.queue.finish(entry.id, JobStatus.FAILED,
                                  error=JobError(f"the host could not free the GPU: {error}"))
            raise
        with self._lock:
            self._launching = None
            self._spawn_worker(entry)
        return entry

    def _spawn_worker(self, entry: QueueEntry) -> None:
        try:
            self.queue.logs.mkdir(parents=True, exist_ok=True)
            output = open(self.queue.worker_output(entry.id), "ab")
            process = self._take_spare(entry) or self._spawn(entry.id, output, entry.workdir or None)
        except OSError as error:
            self.queue.finish(entry.id, JobStatus.FAILED, error=JobError(f"the job's process cannot start: {error}"))
            self._after_job()
            raise
        token = process_token(process.pid)
        self.queue.record_worker(entry.id, process.pid, token)
        entry.pid, entry.pid_token = process.pid, token
        self._worker = _Worker(entry, process, process.pid, output, hooked=True)
        self._notice(Message(f"job {entry.id} ({entry.name}) started"))
        self._prepare_spare()

    def _spawn(self, job: str, output, workdir: str | None) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "traintrain.jobs.worker", str(self.queue.folder), job],
            stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT, cwd=workdir,
            start_new_session=True,  # its own process group: a Ctrl-C at the terminal reaches only us
        )

    def _prepare_spare(self) -> None:
        """Start the spare worker for the next job (it imports while the current one trains)."""
        if not self._spare_enabled or not self._starting or (self._spare and self._spare.poll() is None):
            return
        try:
            self._spare = self._spawn(STANDBY, subprocess.DEVNULL, None)
        except OSError:
            self._spare = None  # jobs then start a worker of their own

    def _take_spare(self, entry: QueueEntry) -> subprocess.Popen | None:
        """Hand the job to the spare worker, if one is alive; it moves into the job's folder itself."""
        spare, self._spare = self._spare, None
        if spare is None or spare.poll() is not None or spare.stdin is None:
            return None
        try:
            spare.stdin.write(f"{entry.id} {self.queue.worker_output(entry.id)}\n".encode())
            spare.stdin.flush()
        except OSError:
            return None
        return spare

    def _close_spare(self) -> None:
        """End the spare worker now: it holds no job and has written nothing, so closing the manager
        need not wait for the seconds of imports it may still be in (a clean exit after them would)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.kill()
            spare.wait()
            if spare.stdin:
                spare.stdin.close()

    def _worker_ended(self) -> None:
        """Record how the worker ended when it could not say so itself (killed, crashed, cancelled)."""
        worker = self._worker
        assert worker is not None
        self._follow_log()
        if worker.process is not None:
            if worker.process.stdin:
                worker.process.stdin.close()
            if worker.output:
                worker.output.close()
        if worker.cancelled:
            ended = self.queue.finish(worker.entry.id, JobStatus.CANCELLED)
        elif worker.process is None:  # an earlier manager's worker: no exit status to tell, but maybe a state
            ended = next((e for e in self.queue.recover() if e.id == worker.entry.id), None)
        else:
            ended = self.queue.finish(worker.entry.id, JobStatus.FAILED, error=JobError(
                f"the job's process ended unexpectedly ({_how_it_ended(worker.process.returncode)}); its output "
                f"is in {self.queue.worker_output(worker.entry.id)}"))
        if ended is not None:  # the worker recorded nothing, so it may have been writing a file
            remove_job_temps(ended.config(), ended.results_dir(self.queue.output_dir))
        final = next((e for e in self.queue.state().entries if e.id == worker.entry.id), None)
        if final is not None:
            error = f": {final.error.message}" if final.error else ""
            self._notice(Message(f"job {final.id} ({final.name}) {final.status.value}{error}",
                                 "warning" if final.status is not JobStatus.DONE else "info"))
        self._worker, self._reader = None, None
        if worker.hooked:
            self._after_job()
        self._wake.set()

    def _after_job(self) -> None:
        try:
            self.hooks.after_job()
        except Exception as error:  # the next job must still start, and the face stay up
            self._notice(Message(f"the host could not take the GPU back: {type(error).__name__}: {error}", "warning"))

    def _follow_log(self) -> None:
        """Pass the running job's new events to the face's reporter."""
        if self._reader is None:
            return
        for record in self._reader.read():
            event = record_event(record)
            if event is not None:
                self.report(event)

    def _running_entry(self) -> QueueEntry | None:
        return self._worker.entry if self._worker else self.queue.state().running()

    def _changed(self, entry: QueueEntry) -> QueueEntry:
        self._wake.set()
        return entry

    def _notice(self, event: Event) -> None:
        if isinstance(event, Message):
            self.notices = (self.notices + [event.text])[-NOTICES_KEPT:]
        self.report(event)


def remove_job_temps(config: TrainConfig, output_dir: Path) -> list[Path]:
    """The temporary files a killed job left of the files it writes (its LoRAs, states, previews)."""
    from traintrain.modes.registry import get_mode

    names = get_mode(config.mode).planned_files(config)
    finals = [Path(output_dir) / name for name in names]
    finals += [path.with_suffix(".state") for path in finals if path.suffix == ".safetensors"]
    return [temp for final in finals for temp in remove_stale_temps(final)]


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"killed by signal {-code}"
        return f"killed by {name}" + (", as the system does when memory runs out" if name == "SIGKILL" else "")
    return f"exit code {code}"


def _signal(pid: int, number: signal.Signals, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, number)  # the worker leads its own process group
        else:
            os.kill(pid, number)
    except ProcessLookupError:
        pass


def _hold_manager_lock(queue: JobQueue) -> IO[str]:
    queue.folder.mkdir(parents=True, exist_ok=True)
    handle = open(queue.folder / "manager.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"the queue in {queue.folder} is already run by another TrainTrain process",
                        "add jobs to that queue, or close that process first", field=OUTPUT_DIR) from None
    return handle
