"""Interruption: Ctrl-C / SIGTERM save {name}_{step}steps and a state that resumes; a second one aborts."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from job_helpers import tiny_job
from traintrain.cli import EXIT_INTERRUPTED, main, stop_on_signals
from traintrain.networks.kohya_format import load_lora

STEPS = 30  # enough to be mid-run when the signal lands, few enough to resume quickly


def start_training(config_path, output_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "traintrain", "train", "--config", str(config_path), "--output-dir", str(output_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )


def read_stream(stream, chunks):
    for chunk in iter(lambda: stream.read1(4096), b""):
        chunks.append(chunk)


def test_ctrl_c_saves_a_loadable_lora_and_a_state_that_resumes(tmp_path, capsys):
    config = tiny_job(tmp_path, train_iterations=STEPS, save_lora_name="sig", train_batch_size=1)
    config.save_json(tmp_path / "job.json")
    process = start_training(tmp_path / "job.json", tmp_path / "out")
    chunks = []
    reader = threading.Thread(target=read_stream, args=(process.stderr, chunks), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not re.search(rb"[1-9]\d*/%d" % STEPS, b"".join(chunks)):
        assert process.poll() is None and time.monotonic() < deadline, b"".join(chunks).decode(errors="replace")
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == EXIT_INTERRUPTED
    reader.join(timeout=10)
    err = b"".join(chunks).decode(errors="replace")
    found = re.search(r"traintrain: stopped at LoRA step (\d+) of 30: saved (\S+) and the resumable state (\S+); continue with: "
                      r"traintrain train --resume (\S+)", err)
    assert found, err
    step = int(found.group(1))
    assert step < STEPS and "Traceback" not in err
    lora = tmp_path / "out" / f"sig_{step}steps.safetensors"
    state = tmp_path / "out" / f"sig_{step}steps.state"
    assert found.group(2) == str(lora) and found.group(3) == found.group(4) == str(state)
    tensors, metadata = load_lora(lora)
    assert tensors and metadata["ss_max_train_steps"] == str(step)

    assert main(["train", "--resume", str(state)]) == 0
    out = capsys.readouterr().out
    assert f"saved {tmp_path / 'out' / 'sig.safetensors'}" in out
    assert load_lora(tmp_path / "out" / "sig.safetensors")[1]["ss_max_train_steps"] == str(STEPS)


@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT)])
def test_first_signal_requests_a_stop_and_the_second_aborts(first, second):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop = threading.Event()
    with stop_on_signals(stop):
        signal.raise_signal(first)  # asks for a save and a stop after the current step
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(second)  # aborts at once
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_resume_refuses_settings_options(capsys, tmp_path):
    code = main(["train", "--resume", str(tmp_path / "x.state"), "--set", "network_rank=4"])
    err = capsys.readouterr().err
    assert code == 2 and "--resume takes the settings from the state" in err and "drop --set network_rank" in err
    code = main(["train", "--resume", str(tmp_path / "x.state")])
    assert code == 2 and "not found" in capsys.readouterr().err
