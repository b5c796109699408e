"""`traintrain train --num-processes N`: the same command under `accelerate launch`, N data-parallel processes.

On GPUs each process takes one GPU; on the CPU the processes share its cores (gloo). The command's
inputs are checked here first, so a mistake is one line from this process, not N tracebacks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from traintrain.errors import UserError

OPTION = "--num-processes"


def positive_count(text: str) -> int:
    """argparse type of --num-processes."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of processes of at least 1, got '{text}'")
    return value


def launched() -> bool:
    """Whether this process was started by a launcher (then --num-processes is already in effect)."""
    return "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Whether this process prints the result (one process, or the main one of a launched run)."""
    return int(os.environ.get("RANK", "0")) == 0


def check_launch(count: int, batch_size: int | None) -> None:
    """The checks that must hold in every process, made once before starting them."""
    import torch

    from traintrain.training.distributed import Processes

    if torch.cuda.is_available() and torch.cuda.device_count() < count:
        raise UserError(
            f"--num-processes {count} needs {count} GPUs, this machine has {torch.cuda.device_count()}",
            f"give --num-processes {torch.cuda.device_count()} or fewer",
        )
    if batch_size is not None:
        Processes(0, count).check_batch(batch_size)


def without_option(argv: list[str]) -> list[str]:
    """`argv` less --num-processes N (or --num-processes=N)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == OPTION:
            skip = True
        elif not item.startswith(OPTION + "="):
            kept.append(item)
    return kept


def launch(argv: list[str], count: int) -> int:
    """Run `traintrain <argv>` in `count` processes through accelerate launch; its exit code."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--multi_gpu",
        "--num_processes", str(count), "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "traintrain", *without_option(argv),
    ]
    process = subprocess.Popen(command)
    # Ctrl-C reaches the processes themselves (they stop after an agreed step and save): wait for them
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM)),
    }
    try:
        return process.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
