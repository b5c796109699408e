"""One queued job in a process of its own: `python -m traintrain.jobs.worker QUEUE_DIR JOB_ID`.

Whatever the job does (bad input, a diverged loss, out of memory, a crash in native code), only
this process ends; the app that started it goes on. Every event goes to the job's event log as it
happens, and the outcome is recorded in the queue. SIGTERM or SIGINT asks for Stop and Save (a
`{name}_{k}steps` file and a state; status "stopped"). The manager holds the other end of a pipe on
our stdin: when it closes because the app died, the job stops the same way and is recorded
"interrupted", resumable from that state.

`python -m traintrain.jobs.worker QUEUE_DIR --standby` is a spare worker: it imports the training
code (torch, diffusers: seconds) before there is a job, then reads the id of its job as the first
line on stdin, so a job the manager hands it starts at once.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from traintrain.errors import NonFiniteLoss, TrainingStopped, UserError
from traintrain.jobs.event_log import EventLogWriter, JobView, event_record
from traintrain.jobs.queue import JobError, JobQueue, JobStatus, QueueEntry
from traintrain.training.events import Event, Message, Reporter


@dataclass
class JobOutcome:
    status: JobStatus
    error: JobError | None = None
    state: str | None = None  # to resume from (stopped, interrupted), or a finished run's save_state


STANDBY = "--standby"


def main(argv: list[str] | None = None) -> int:
    queue_dir, job_id = argv if argv is not None else sys.argv[1:]
    if job_id == STANDBY:
        job_id = wait_for_job()
        if not job_id:
            return 0  # the manager closed without a job for us
    queue = JobQueue(Path(queue_dir).parent)
    entry = queue.get(job_id)
    if entry.workdir:
        os.chdir(entry.workdir)
    stop, orphaned = threading.Event(), threading.Event()
    watch_parent(stop, orphaned)
    log = EventLogWriter(Path(entry.log))
    view = JobView()

    def report(event: Event) -> None:
        record = event_record(event)
        log.write(record)
        view.apply(record)

    log.write({"event": "start", "time": time.time(), "pid": os.getpid(), "resume_state": entry.resume_state})
    with stop_on_signals(stop):
        outcome = run_entry(queue, entry, report, stop, orphaned)
    error = vars(outcome.error) if outcome.error else None
    log.write({"event": "end", "time": time.time(), "status": outcome.status.value, "error": error,
               "state": outcome.state})
    log.close()
    files = view.files
    files.state = outcome.state
    queue.finish(entry.id, outcome.status, error=outcome.error, files=files, resume_state=outcome.state)
    return 0


def run_entry(queue: JobQueue, entry: QueueEntry, report: Reporter, stop: threading.Event,
              orphaned: threading.Event) -> JobOutcome:
    """Train the entry (or continue it from its state); every way it can end becomes an outcome."""
    import torch

    from traintrain.jobs.runner import resume_job, run_job
    from traintrain.training.checkpoint import state_path_for

    try:
        if entry.resume_state:
            result = resume_job(Path(entry.resume_state), output_dir=queue.output_dir,
                                tokenizer_dir=entry.tokenizer_dir, report=report, stop=stop)
        else:
            result = run_job(entry.config(), output_dir=queue.output_dir, tokenizer_dir=entry.tokenizer_dir,
                             report=report, stop=stop, lora_dir=Path(entry.lora_dir) if entry.lora_dir else None)
    except TrainingStopped as stopped:
        report(Message(str(stopped)))
        status = JobStatus.INTERRUPTED if orphaned.is_set() else JobStatus.STOPPED
        return JobOutcome(status, state=str(stopped.state) if stopped.state else None)
    except UserError as error:
        return JobOutcome(JobStatus.FAILED, JobError(error.message, error.field))
    except NonFiniteLoss as error:
        return JobOutcome(JobStatus.FAILED, JobError(str(error)))
    except (torch.cuda.OutOfMemoryError, MemoryError) as error:
        return JobOutcome(JobStatus.FAILED, JobError(
            f"out of memory ({str(error).splitlines()[0] if str(error) else type(error).__name__}); lower "
            "train_batch_size or image_size, or turn on use_gradient_checkpointing", "train_batch_size"))
    except Exception as error:  # a bug or an unusual failure: the traceback goes to the worker's output
        traceback.print_exc()
        where = queue.worker_output(entry.id)
        return JobOutcome(JobStatus.FAILED, JobError(f"{type(error).__name__}: {error} (details in {where})"))
    state = state_path_for(result.path)
    return JobOutcome(JobStatus.DONE, state=str(state) if state.is_file() else None)


def wait_for_job() -> str:
    """Import what every job needs, then read the job's id (a line on stdin; empty at its end).

    The job's own output file replaces the spare's stdout and stderr once the job is known."""
    import traintrain.jobs.runner  # noqa: F401  (the seconds a job would otherwise wait for)

    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            return ""
        line += chunk
    job_id, _, output = line.decode().strip().partition(" ")
    if output:
        descriptor = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        for stream in (1, 2):
            os.dup2(descriptor, stream)
        os.close(descriptor)
    return job_id


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM ask for Stop and Save (cancelling is the manager's SIGKILL)."""
    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def watch_parent(stop: threading.Event, orphaned: threading.Event) -> None:
    """When stdin is a pipe from the manager, its end (the manager's process ended) stops the job."""
    if not stat.S_ISFIFO(os.fstat(0).st_mode):
        return

    def wait_for_end_of_pipe() -> None:
        while os.read(0, 4096):
            pass
        orphaned.set()
        stop.set()

    threading.Thread(target=wait_for_end_of_pipe, daemon=True, name="parent-watch").start()


if __name__ == "__main__":
    raise SystemExit(main())
