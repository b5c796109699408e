"""The job manager: jobs run one at a time in worker processes, stop, resume, fail and crash safely."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from job_helpers import tiny_job
from traintrain.errors import UserError
from traintrain.jobs.event_log import read_view
from traintrain.jobs.manager import JobManager, remove_job_temps
from traintrain.jobs.queue import JobQueue, JobStatus
from traintrain.jobs.runner import run_job
from traintrain.networks.kohya_format import load_lora
from traintrain.training.events import Progress, Saved

LONG = dict(train_iterations=30, train_batch_size=1)  # long enough to act on while it runs


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("manager")
    tiny_job(root)
    return root


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Workers on one thread each, like this process in the bit-identity check."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def manager(tmp_path):
    events = []
    with JobManager(tmp_path / "out", report=events.append, poll_seconds=0.1) as manager:
        manager.events = events
        yield manager


def wait_for(condition, timeout=180):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def running_step(manager):
    running = manager.snapshot().running
    return running.view.step if running else 0


def running_id(manager):
    running = manager.snapshot().running
    return running.entry.id if running else None


def no_temp_files(folder):
    return list(folder.rglob("*.tmp")) == []


def test_a_second_manager_on_the_same_queue_is_refused(tmp_path):
    with JobManager(tmp_path / "out"):
        with pytest.raises(UserError) as error:
            JobManager(tmp_path / "out")
    assert error.value.field == "output_dir" and "already run by another TrainTrain process" in error.value.problem
    JobManager(tmp_path / "out").close()  # free again once the first is closed


def test_closing_ends_the_spare_worker_without_waiting_for_its_imports(tmp_path):
    manager = JobManager(tmp_path / "out")
    spare = manager._spare
    assert spare is not None and spare.poll() is None  # importing torch and diffusers for the next job
    manager.close()
    assert spare.returncode == -signal.SIGKILL  # it had no job and wrote nothing: ended, not waited for


def test_a_paused_queue_starts_nothing(root, manager):
    manager.pause()
    entry = manager.enqueue(tiny_job(root))
    time.sleep(0.5)
    snapshot = manager.snapshot()
    assert snapshot.paused and snapshot.running is None and [e.id for e in snapshot.queued] == [entry.id]


@pytest.mark.slow
def test_jobs_run_in_order_in_workers_and_report_their_progress(root, manager):
    first = manager.start(tiny_job(root, save_lora_name="first", **LONG))
    with pytest.raises(UserError, match="is training; add this job to the queue"):
        manager.start(tiny_job(root, save_lora_name="second"))
    second = manager.enqueue(tiny_job(root, save_lora_name="second"))
    wait_for(lambda: running_step(manager) >= 2)
    running = manager.snapshot().running
    assert running.entry.id == first.id and running.view.total == 30 and running.view.phase == "LoRA"
    assert running.view.series[0].step == 1 and running.view.learning_rate > 0 and running.view.steps_per_second > 0
    assert [e.id for e in manager.snapshot().queued] == [second.id]
    assert manager.wait_until_idle(180)
    history = manager.snapshot().history
    assert [(e.id, e.status) for e in history] == [(second.id, JobStatus.DONE), (first.id, JobStatus.DONE)]
    assert history[0].started >= history[1].finished  # one after the other, without a click
    out = manager.queue.output_dir
    assert history[1].files.loras == [str(out / "first.safetensors")] and (out / "second.safetensors").is_file()
    assert [e.step for e in manager.events if isinstance(e, Progress) and e.total == 30] == list(range(1, 31))
    assert any(isinstance(e, Saved) and e.path == str(out / "second.safetensors") for e in manager.events)


@pytest.mark.slow
def test_stop_and_save_then_resume_ends_bit_identical_to_an_uninterrupted_run(root, manager, tmp_path):
    config = tiny_job(root, save_lora_name="part", **LONG)
    entry = manager.start(config)
    wait_for(lambda: running_step(manager) >= 3)
    assert manager.stop_and_save()
    wait_for(lambda: not manager.busy())
    stopped = manager.queue.get(entry.id)
    step = int(stopped.resume_state.rsplit("_", 1)[1].removesuffix("steps.state"))
    out = manager.queue.output_dir
    assert stopped.status is JobStatus.STOPPED and 3 <= step < 30
    assert stopped.resume_state == str(out / f"part_{step}steps.state")
    assert load_lora(out / f"part_{step}steps.safetensors")[1]["ss_max_train_steps"] == str(step)
    manager.resume(entry.id)
    wait_for(lambda: manager.queue.get(entry.id).status is JobStatus.DONE)
    resumed = load_lora(out / "part.safetensors")[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = load_lora(run_job(config, output_dir=tmp_path / "whole").path)[0]
    finally:
        torch.set_num_threads(threads)
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    view = manager.view(entry.id)
    assert [point.step for point in view.series] == list(range(1, 31))  # the resumed run continues the plot


@pytest.mark.slow
def test_bad_input_a_killed_worker_and_cancel_end_their_jobs_and_the_manager_goes_on(root, manager, tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    bad = manager.start(tiny_job(root, save_lora_name="bad", model=str(tmp_path / "bad.safetensors")))
    wait_for(lambda: manager.queue.get(bad.id).status is JobStatus.FAILED)
    # At once, as a page that shows the failure lets a user do: its exiting worker is not "training".
    killed = manager.start(tiny_job(root, save_lora_name="killed", **LONG))
    wait_for(lambda: manager.queue.get(killed.id).status is JobStatus.RUNNING and running_step(manager) >= 1)
    failed = manager.queue.get(bad.id)
    assert failed.status is JobStatus.FAILED and failed.error.field == "model"
    assert "truncated or corrupt safetensors file" in failed.error.message
    os.kill(manager.queue.get(killed.id).pid, signal.SIGKILL)
    wait_for(lambda: manager.queue.get(killed.id).status is JobStatus.FAILED)
    error = manager.queue.get(killed.id).error
    assert error.message.startswith("the job's process ended unexpectedly (killed by SIGKILL") and error.field is None
    cancelled = manager.enqueue(tiny_job(root, save_lora_name="cancelled", **LONG))
    wait_for(lambda: running_id(manager) == cancelled.id and running_step(manager) >= 1)
    assert manager.cancel()
    assert manager.queue.get(cancelled.id).status is JobStatus.CANCELLED and not manager.busy()
    out = manager.queue.output_dir
    assert no_temp_files(out) and not (out / "cancelled.safetensors").exists()
    assert any("ended unexpectedly" in notice for notice in manager.snapshot().notices)


def test_the_temporary_files_a_killed_job_leaves_are_removed(root, tmp_path):
    config = tiny_job(root, save_lora_name="job", save_per_steps=2, train_iterations=5)
    left = [tmp_path / name for name in (".job.safetensors.a1.tmp", ".job_2steps.state.b2.tmp",
                                         ".job_4steps.safetensors.c3.tmp")]
    other = tmp_path / ".job_x.safetensors.d4.tmp"  # another job's
    for path in [*left, other]:
        path.write_bytes(b"half")
    assert sorted(remove_job_temps(config, tmp_path)) == sorted(left)
    assert [path.name for path in tmp_path.glob("*.tmp")] == [other.name]


MANAGER_SCRIPT = textwrap.dedent("""
    import sys, time
    from traintrain.config import TrainConfig
    from traintrain.jobs.manager import JobManager
    manager = JobManager(sys.argv[1])
    manager.start(TrainConfig.load_json(sys.argv[2]))
    time.sleep(600)
""")


@pytest.mark.slow
def test_a_killed_app_leaves_the_queue_intact_and_the_job_resumable(root, tmp_path):
    config = tiny_job(root, save_lora_name="crash", **LONG)
    config.save_json(tmp_path / "job.json")
    app = subprocess.Popen([sys.executable, "-c", MANAGER_SCRIPT, str(tmp_path / "out"), str(tmp_path / "job.json")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    queue = JobQueue(tmp_path / "out")
    try:
        wait_for(lambda: queue.state().running() is not None and read_view(queue.state().running().log).step >= 1)
        later = queue.add(tiny_job(root, save_lora_name="later"))
        app.send_signal(signal.SIGKILL)
        app.wait(10)
    finally:
        app.kill()
    events = []
    with JobManager(tmp_path / "out", report=events.append, poll_seconds=0.1) as manager:
        manager.pause()  # keep "later" waiting, to see the state the kill left
        wait_for(lambda: not manager.busy())  # the orphaned worker saves its state and ends
        job = manager.queue.state().history()[0]
        assert job.name == "crash" and job.status is JobStatus.INTERRUPTED
        assert job.resume_state and os.path.isfile(job.resume_state)
        assert [e.id for e in manager.snapshot().queued] == [later.id]
        manager.resume(job.id)
        manager.pause(False)
        wait_for(lambda: manager.queue.get(later.id).status is JobStatus.DONE)
        assert manager.queue.get(job.id).status is JobStatus.DONE
        lora = manager.queue.output_dir / "crash.safetensors"
        assert load_lora(lora)[1]["ss_max_train_steps"] == "30"


@pytest.mark.slow
def test_queue_run_runs_the_queue_in_the_foreground_until_it_is_empty(root, tmp_path, capsys):
    from traintrain.cli import main

    queue = JobQueue(tmp_path / "out")
    first = queue.add(tiny_job(root, save_lora_name="one", train_iterations=2))
    failing = queue.add(tiny_job(root, save_lora_name="two", train_iterations=2))
    (queue.output_dir / "two.safetensors").write_bytes(b"")  # appeared after queueing: the job fails
    assert main(["queue", "run", "--output-dir", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert f"job {first.id} (one) done: {queue.output_dir / 'one.safetensors'}" in captured.out
    assert f"job {failing.id} (two) failed: {queue.output_dir / 'two.safetensors'} already exists" in captured.out
    assert "LoRA" in captured.err and queue.state().queued() == []


class GpuHeldByTheHost:
    """Hooks whose before_job waits, as a Web-UI's GPU lock does while a txt2img runs."""

    def __init__(self):
        self.free = threading.Event()
        self.calls = []

    def before_job(self):
        self.calls.append("before")
        assert self.free.wait(120)

    def after_job(self):
        self.calls.append("after")


def test_while_the_host_keeps_the_gpu_the_job_waits_and_the_manager_still_answers(root, tmp_path):
    host = GpuHeldByTheHost()
    with JobManager(tmp_path / "out", hooks=host, poll_seconds=0.1) as manager:
        starting = threading.Thread(target=manager.start, args=(tiny_job(root, save_lora_name="waits"),))
        starting.start()
        wait_for(lambda: host.calls == ["before"])
        began = time.monotonic()
        waiting = manager.snapshot().running  # a page's poll is answered while Start waits for the GPU
        assert time.monotonic() - began < 10 and waiting.entry.name == "waits" and waiting.view.step == 0
        with pytest.raises(UserError, match="is training"):
            manager.start(tiny_job(root, save_lora_name="other"))
        host.free.set()
        starting.join(60)
        wait_for(lambda: manager.queue.get(waiting.entry.id).status is JobStatus.DONE)
        wait_for(lambda: host.calls == ["before", "after"])
