"""`traintrain queue`: the command line's door to the job queue the web UI shares (jobs/queue.py).

`queue run` runs the queue in the foreground with the same job manager as the UI and the same
progress bar as `train`: the first Ctrl-C stops and saves the current job (no further job starts),
the second cancels it. Exit codes: 0 every job done, 1 a job failed, 2 bad input, 130 stopped.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from traintrain.errors import UserError
from traintrain.jobs.queue import JobQueue, JobStatus, QueueEntry

EXIT_JOB_FAILED = 1


def add_queue_parser(commands, parser_class) -> None:
    queue = commands.add_parser(
        "queue", help="the job queue of an output folder, shared with the web UI: add, list, remove, move, run",
        description="Jobs queued in {output}/queue run one at a time, in order, each in a process of its own.",
    )
    queue.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    actions = queue.add_subparsers(dest="queue_command", required=True, parser_class=parser_class)
    add = actions.add_parser("add", help="queue a job, checked now as train checks it")
    source = add.add_mutually_exclusive_group()
    source.add_argument("--preset", metavar="NAME", help="start from a shipped preset")
    source.add_argument("--config", metavar="FILE", help="start from a settings JSON file")
    add.add_argument("--mode", help="LoRA, iLECO, Difference, ADDifT or Multi-ADDifT")
    add.add_argument("--model", metavar="PATH", help="base model: .safetensors/.ckpt file or diffusers folder")
    add.add_argument("--data", metavar="DIR", help="LoRA mode: folder of images (same as lora_data_directory)")
    add.add_argument("--tokenizer", metavar="DIR", help="folder with the tokenizer for single-file models")
    add.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="set a parameter (repeatable)")
    add.set_defaults(nan_policy=None)
    remove = actions.add_parser("remove", help="remove a job that is not training")
    remove.add_argument("id", metavar="ID", help="the job's id, as queue list shows it")
    move = actions.add_parser("move", help="move a queued job to a position (1 = next to run)")
    move.add_argument("id", metavar="ID", help="the job's id, as queue list shows it")
    move.add_argument("position", metavar="POS", type=int, help="its new position, as queue list numbers them")
    actions.add_parser("list", help="show the running job, the queued ones in order and the history")
    actions.add_parser("run", help="run the queued jobs in the foreground until none is left")
    actions.add_parser("pause", help="start no new job (the running one goes on)")
    actions.add_parser("resume", help="start queued jobs again after pause")
    for action in actions.choices.values():
        action.add_argument("--output-dir", default="output", metavar="DIR",
                            help="the output folder whose queue this is (default: ./output)")
        action.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def command_queue(args) -> int:
    output_dir = Path(args.output_dir)
    if args.queue_command == "run":
        return _run(output_dir)
    queue = JobQueue(output_dir, report=_warn)
    if args.queue_command == "add":
        from traintrain.cli import config_from_args

        entry = queue.add(config_from_args(args), tokenizer_dir=args.tokenizer)
        print(f"queued job {entry.id} ({entry.name}) at position {len(queue.state().queued())}")
    elif args.queue_command == "remove":
        queue.remove(args.id)
        print(f"removed job {args.id}")
    elif args.queue_command == "move":
        if args.position < 1:
            raise UserError(f"position {args.position}: positions start at 1")
        queue.move(args.id, args.position - 1)
        print(f"moved job {args.id} to position {min(args.position, len(queue.state().queued()))}")
    elif args.queue_command in ("pause", "resume"):
        queue.set_paused(args.queue_command == "pause")
        print("the queue is paused" if args.queue_command == "pause" else "the queue runs again")
    else:
        print("\n".join(_listing(queue)))
    return 0


def _listing(queue: JobQueue) -> list[str]:
    from traintrain.jobs.event_log import read_view

    state = queue.state()
    lines = []
    running = state.running()
    if running:
        view = read_view(Path(running.log))
        lines.append(f"running  {_describe(running)}  step {view.step}/{view.total or '?'}")
    queued = state.queued()
    lines.append(f"queued{' (paused)' if state.paused else ''}: {len(queued) or 'none'}")
    lines += [f"{position:>4}  {_describe(entry)}" for position, entry in enumerate(queued, 1)]
    if state.history():
        lines.append("history (newest first):")
        lines += [f"  {entry.status.value:<11} {_describe(entry)}  {_ending(entry)}" for entry in state.history()]
    return lines


def _describe(entry: QueueEntry) -> str:
    settings = entry.settings
    return f"{entry.id}  {entry.name}  {settings.get('mode', '')}  {settings.get('model', '')}"


def _ending(entry: QueueEntry) -> str:
    if entry.error:
        return entry.error.message
    if entry.status in (JobStatus.STOPPED, JobStatus.INTERRUPTED):
        return f"resumable from {entry.resume_state}" if entry.resume_state else "nothing to resume from"
    return ", ".join(entry.files.loras)


def _run(output_dir: Path) -> int:
    from traintrain.cli import EXIT_INTERRUPTED, stop_on_signals
    from traintrain.cli_progress import ProgressPrinter
    from traintrain.jobs.manager import JobManager

    stop = threading.Event()
    with ProgressPrinter() as printer, JobManager(output_dir, report=printer) as manager:
        before = {entry.id for entry in manager.snapshot().history}
        if manager.snapshot().paused and not manager.busy():
            print("the queue is paused: resume it to run its jobs")
            return 0
        try:
            with stop_on_signals(stop):
                asked = False
                while not manager.wait_until_idle(timeout=0.2):
                    if stop.is_set() and not asked:  # a second Ctrl-C raises KeyboardInterrupt
                        manager.hold()
                        manager.stop_and_save()
                        asked = True
        except KeyboardInterrupt:
            manager.cancel()
        ended = [entry for entry in manager.snapshot().history if entry.id not in before]
    for entry in reversed(ended):
        print(f"job {entry.id} ({entry.name}) {entry.status.value}: {_ending(entry)}")
    if any(entry.status in (JobStatus.STOPPED, JobStatus.CANCELLED) for entry in ended):
        return EXIT_INTERRUPTED
    return EXIT_JOB_FAILED if any(entry.status is JobStatus.FAILED for entry in ended) else 0


def _warn(event) -> None:
    print(f"traintrain: warning: {event.text}", file=sys.stderr)
