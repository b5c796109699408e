"""The worker: one queued job, its events in a JSON-lines log, its outcome recorded in the queue."""

import json
import os
import subprocess
import sys
import time

import pytest

from job_helpers import tiny_job
from traintrain.jobs import worker
from traintrain.jobs.event_log import read_view
from traintrain.jobs.queue import JobQueue, JobStatus
from traintrain.networks.kohya_format import load_lora


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker")
    tiny_job(root)
    return root


def records(entry):
    return [json.loads(line) for line in open(entry.log, encoding="utf-8")]


def run_in_this_process(queue, config):
    entry = queue.mark_running(queue.add(config).id)
    assert worker.main([str(queue.folder), entry.id]) == 0
    return queue.get(entry.id)


def test_a_job_runs_and_its_events_and_files_are_recorded(root, tmp_path):
    queue = JobQueue(tmp_path / "out")
    entry = run_in_this_process(queue, tiny_job(root, save_lora_name="job", logging_save_csv=True,
                                                preview_prompts="a red circle", preview_sampling_steps=2))
    out = queue.output_dir
    assert entry.files.previews == [str(out / "job_preview.png")] and (out / "job_preview.png").is_file()
    assert entry.status is JobStatus.DONE and entry.error is None and entry.pid is None
    assert entry.files.loras == [str(out / "job.safetensors")] and entry.files.state is None
    assert len(entry.files.logs) == 1 and entry.files.logs[0].startswith(str(out / "logs" / "job_"))
    log = records(entry)
    assert log[0]["event"] == "start" and log[-1] == {**log[-1], "event": "end", "status": "done", "error": None}
    assert [r["step"] for r in log if r["event"] == "progress"] == [1, 2, 3]
    assert {"event": "saved", "path": str(out / "job.safetensors"), "step": 3} in log
    view = read_view(entry.log)
    assert (view.status, view.step, view.total, [p.step for p in view.series]) == ("done", 3, 3, [1, 2, 3])
    last_progress = [r for r in log if r["event"] == "progress"][-1]
    assert view.steps_per_second > 0 and view.loss == last_progress["loss"]
    assert {"event": "written", "path": str(out / "job_preview.png"), "kind": "preview"} in log


def test_a_failing_job_is_recorded_with_the_user_errors_words_and_field(root, tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    queue = JobQueue(tmp_path / "out")
    entry = run_in_this_process(queue, tiny_job(root, model=str(tmp_path / "bad.safetensors")))
    assert entry.status is JobStatus.FAILED and entry.error.field == "model"
    assert "truncated or corrupt safetensors file" in entry.error.message
    assert records(entry)[-1]["error"] == {"message": entry.error.message, "field": "model"}
    assert read_view(entry.log).error == entry.error


@pytest.mark.slow
def test_when_its_parent_goes_the_worker_saves_a_state_and_the_job_is_interrupted(root, tmp_path):
    queue = JobQueue(tmp_path / "out")
    entry = queue.mark_running(queue.add(tiny_job(root, save_lora_name="orphan", train_iterations=40,
                                                  train_batch_size=1)).id)
    process = subprocess.Popen([sys.executable, "-m", "traintrain.jobs.worker", str(queue.folder), entry.id],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while read_view(entry.log).step < 1:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.stdin.close()  # as when the app holding the pipe is killed
    assert process.wait(60) == 0
    entry = queue.get(entry.id)
    step = int(entry.resume_state.rsplit("_", 1)[1].removesuffix("steps.state"))
    assert entry.status is JobStatus.INTERRUPTED and 1 <= step < 40
    assert entry.resume_state == str(queue.output_dir / f"orphan_{step}steps.state")
    assert load_lora(queue.output_dir / f"orphan_{step}steps.safetensors")[1]["ss_max_train_steps"] == str(step)
    assert entry.files.state == entry.resume_state and read_view(entry.log).status == "interrupted"
