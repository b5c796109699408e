"""SIGKILL at 20 random moments around saves leaves only complete, loadable files under final names.

Each kill hits a real process running `traintrain train` (the CLI's `main`). The processes are forked
from one driver that has already paid the 5-second import of torch and diffusers, so 20 kills take
about a minute instead of three. Half the kills land at a random time, half a few milliseconds after
a save's temporary file appears, when a non-atomic writer would leave a truncated file.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from job_helpers import tiny_job
from traintrain.training.csv_log import HEADER

pytestmark = pytest.mark.slow

KILLS = 20
DRIVER = r"""
import json, os, sys
from traintrain.cli import main
import traintrain.jobs.runner, traintrain.modes.lora  # imported once, inherited by every fork

for line in sys.stdin:
    log, args = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = main(args)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


class Driver:
    def __init__(self):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.process = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env)

    def start(self, log: Path, args: list[str]) -> int:
        self.process.stdin.write(json.dumps([str(log), args]) + "\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def wait(self) -> int:
        return int(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def train_args(root: Path, out: Path, iterations: int) -> list[str]:
    config = tiny_job(root)  # writes the tiny model and images once
    settings = {
        "train_iterations": iterations, "save_per_steps": 1, "save_overwrite": "true", "logging_save_csv": "true",
        "save_as_json": "true", "network_type": "c3lier", "network_rank": 32, "train_batch_size": 1,
        "image_size": 64, "image_buckets_step": 64, "image_min_length": 64, "train_model_precision": "fp32",
        "save_precision": "fp32", "save_lora_name": "job", "train_seed": 1,
    }
    args = ["train", "--model", config.model, "--data", config.lora_data_directory, "--output-dir", str(out)]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return args


def wait_for_temp(out: Path, deadline: float) -> None:
    """Until a save's temporary file exists (the middle of a save), or the deadline."""
    while time.monotonic() < deadline:
        if out.is_dir() and any(name.startswith(".") and ".safetensors." in name and name.endswith(".tmp")
                                for name in os.listdir(out)):
            return
        time.sleep(0.0005)


def check_outputs(out: Path, expected_keys: set[str]) -> tuple[set[str], int]:
    """Every final file complete; returns the final LoRA names and how many LoRA temporaries remain."""
    loras = set()
    for path in out.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            assert set(handle.keys()) == expected_keys, path
            assert int(handle.metadata()["ss_steps"]) >= 1
            for key in handle.keys():
                assert torch.isfinite(handle.get_tensor(key)).all(), (path, key)
        loras.add(path.name)
    for path in out.glob("*.state"):
        torch.load(path, weights_only=True)
    for path in out.rglob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))
    for path in out.rglob("*.csv"):
        text = path.read_text(encoding="utf-8")
        assert text.endswith("\n"), path
        rows = list(csv.reader(text.splitlines()))
        steps = rows[rows.index(HEADER) + 1:]
        for row in steps:
            assert len(row) == len(HEADER), (path, row)
            [float(value) for value in row]
    return loras, len(list(out.glob(".*.safetensors.*.tmp")))


def test_sigkill_around_saves_leaves_only_complete_files(tmp_path):
    out = tmp_path / "out"
    reference = tmp_path / "reference"
    driver = Driver()
    try:
        driver.start(tmp_path / "reference.log", train_args(tmp_path, reference, 2))
        assert driver.wait() == 0, (tmp_path / "reference.log").read_text()
        with safe_open(str(reference / "job.safetensors"), framework="pt") as handle:
            expected_keys = set(handle.keys())

        chooser = random.Random(8)
        seen: set[str] = set()
        mid_save_kills = 0
        for trial in range(KILLS):
            pid = driver.start(tmp_path / f"kill{trial}.log", train_args(tmp_path, out, 30))
            started = time.monotonic()
            if trial % 2:
                wait_for_temp(out, started + 8.0)
                time.sleep(chooser.uniform(0.0, 0.02))
            else:
                time.sleep(chooser.uniform(1.0, 4.0))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it finished (and was reaped) before its kill
            driver.wait()  # killed, or finished before its kill
            loras, temps = check_outputs(out, expected_keys)
            assert seen <= loras, f"kill {trial} lost a previously complete file: {seen - loras}"
            seen |= loras
            mid_save_kills += temps > 0
        print(f"{mid_save_kills} of {KILLS} kills landed in the middle of a save")
        assert seen, "no kill came after a first save: the delays are too short for this machine"
        assert mid_save_kills, "no kill landed in the middle of a save"

        driver.start(tmp_path / "final.log", train_args(tmp_path, out, 12))
        assert driver.wait() == 0, (tmp_path / "final.log").read_text()
        loras, _ = check_outputs(out, expected_keys)
        assert {f"job_{k}steps.safetensors" for k in range(1, 12)} | {"job.safetensors"} <= loras
        assert not list(out.glob(".*.safetensors.*.tmp")), "a new run clears the temporary files of its own names"
    finally:
        driver.close()
