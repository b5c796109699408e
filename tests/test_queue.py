"""The job queue on disk: it persists, survives concurrent writers and damage, refuses clashing names."""

import json
import multiprocessing
import os

import pytest

from job_helpers import tiny_job
from traintrain.errors import UserError
from traintrain.jobs.queue import JobQueue, JobStatus


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("queue")
    tiny_job(root)  # the model and images, once
    return root


@pytest.fixture
def queue(tmp_path):
    return JobQueue(tmp_path / "out")


def names(entries):
    return [entry.name for entry in entries]


def test_the_queue_survives_a_new_queue_on_the_same_folder(root, queue, tmp_path):
    first = queue.add(tiny_job(root, save_lora_name="a", network_rank=4))
    queue.add(tiny_job(root, save_lora_name="b"))
    queue.set_paused(True)
    again = JobQueue(tmp_path / "out").state()
    assert names(again.queued()) == ["a", "b"] and again.paused
    entry = again.find(first.id)
    assert entry.status is JobStatus.QUEUED and entry.config() == tiny_job(root, save_lora_name="a", network_rank=4)
    assert entry.log.endswith(f"queue/logs/{first.id}.jsonl") and entry.workdir == os.getcwd()


def _add_many(folder, root, prefix, start):
    start.wait()
    queue = JobQueue(folder)
    for number in range(12):
        queue.add(tiny_job(root, save_lora_name=f"{prefix}{number}"))


def test_concurrent_adds_from_two_processes_lose_nothing(root, tmp_path):
    context = multiprocessing.get_context("fork")  # the children reuse this process's imports
    start = context.Event()
    workers = [context.Process(target=_add_many, args=(tmp_path / "out", root, prefix, start)) for prefix in "xy"]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    added = names(JobQueue(tmp_path / "out").state().queued())
    assert sorted(added) == sorted(f"{p}{n}" for p in "xy" for n in range(12))


def test_a_save_name_already_queued_or_on_disk_is_refused(root, queue):
    queue.add(tiny_job(root, save_lora_name="same"))
    with pytest.raises(UserError) as queued:
        queue.add(tiny_job(root, save_lora_name="same"))
    assert queued.value.field == "save_lora_name" and "already saves as 'same'" in queued.value.problem
    (queue.output_dir / "disk.safetensors").write_bytes(b"x")
    with pytest.raises(UserError) as on_disk:
        queue.add(tiny_job(root, save_lora_name="disk"))
    assert on_disk.value.field == "save_lora_name"
    assert on_disk.value.message == (f"{queue.output_dir / 'disk.safetensors'} already exists; choose another "
                                     "save_lora_name or set save_overwrite=true")
    assert queue.add(tiny_job(root, save_lora_name="disk", save_overwrite=True)).name == "disk"
    assert names(queue.state().queued()) == ["same", "disk"]


def test_bad_input_is_refused_when_queued_as_run_job_would(root, queue, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as error:
        queue.add(tiny_job(root, lora_data_directory=str(tmp_path / "missing")))
    assert error.value.field == "lora_data_directory"
    with pytest.raises(UserError) as error:
        queue.add(tiny_job(root, model=str(tmp_path / "nothing.safetensors")))
    assert error.value.field == "model"
    assert queue.state().entries == []


def test_move_remove_edit_duplicate_and_pause(root, queue):
    a, b, c = (queue.add(tiny_job(root, save_lora_name=name)) for name in "abc")
    queue.move(c.id, 0)
    assert names(queue.state().queued()) == ["c", "a", "b"]
    queue.move(c.id, 99)
    queue.move(b.id, 1)
    assert names(queue.state().queued()) == ["a", "b", "c"]
    queue.remove(a.id)
    assert names(queue.state().queued()) == ["b", "c"]
    edited = queue.edit(b.id, tiny_job(root, save_lora_name="b", network_rank=8))
    assert queue.get(b.id).config().network_rank == 8 and edited.id == b.id
    with pytest.raises(UserError) as clash:
        queue.edit(b.id, tiny_job(root, save_lora_name="c"))
    assert clash.value.field == "save_lora_name"
    copy = queue.duplicate(b.id)
    (queue.output_dir / "b_3.safetensors").write_bytes(b"x")
    second_copy = queue.duplicate(b.id)
    assert (copy.name, second_copy.name) == ("b_2", "b_4") and copy.config().network_rank == 8
    assert names(queue.state().queued()) == ["b", "c", "b_2", "b_4"]
    queue.set_paused(True)
    assert queue.state().paused
    queue.set_paused(False)
    assert not queue.state().paused
    queue.mark_running(b.id)
    for change in (lambda: queue.edit(b.id, tiny_job(root, save_lora_name="b")), lambda: queue.move(b.id, 0),
                   lambda: queue.remove(b.id)):
        with pytest.raises(UserError):
            change()
    with pytest.raises(UserError, match="no job nope"):
        queue.remove("nope")


def test_a_damaged_or_missing_queue_file_falls_back_to_its_copy_with_a_warning(root, tmp_path):
    warnings = []
    queue = JobQueue(tmp_path / "out", report=warnings.append)
    queue.add(tiny_job(root, save_lora_name="a"))
    queue.add(tiny_job(root, save_lora_name="b"))
    queue.file.write_text('{"format": 1, "entr')  # a torn write by some other program
    assert names(queue.state().queued()) == ["a"]  # the copy from before the last change
    assert "damaged" in warnings[0].text and warnings[0].level == "warning"
    assert list(queue.folder.glob("queue.json.damaged-*"))[0].read_text() == '{"format": 1, "entr'
    queue.add(tiny_job(root, save_lora_name="c"))
    assert [e["settings"]["save_lora_name"] for e in json.loads(queue.file.read_text())["entries"]] == ["a", "c"]
    queue.file.unlink()
    assert names(queue.state().queued()) == ["a"]
    assert "missing" in warnings[-1].text


def test_recover_marks_a_dead_workers_job_interrupted_with_its_newest_state(root, queue):
    job = queue.add(tiny_job(root, save_lora_name="job"))
    other = queue.add(tiny_job(root, save_lora_name="other"))
    queue.mark_running(job.id)
    dead = multiprocessing.get_context("fork").Process(target=int)
    dead.start()
    dead.join()
    queue.record_worker(job.id, dead.pid, None)
    for step in (2, 4):
        (queue.output_dir / f"job_{step}steps.state").write_bytes(b"state")
    (queue.output_dir / "job_x_9steps.state").write_bytes(b"another job's")
    recovered = queue.recover()
    assert [entry.id for entry in recovered] == [job.id]
    entry = queue.get(job.id)
    assert entry.status is JobStatus.INTERRUPTED and entry.resume_state == str(queue.output_dir / "job_4steps.state")
    assert queue.state().history()[0].id == job.id
    with pytest.raises(UserError, match="already saves as 'job'"):
        queue.add(tiny_job(root, save_lora_name="job"))  # it will still write under that name
    resumed = queue.resume(job.id)
    assert [e.id for e in queue.state().queued()] == [job.id, other.id]
    assert resumed.resume_state.endswith("4steps.state")
    queue.mark_running(job.id)
    queue.finish(job.id, JobStatus.FAILED)
    requeued = queue.requeue(job.id)
    assert requeued.resume_state is None and [e.id for e in queue.state().queued()] == [other.id, job.id]


def test_finish_records_only_a_running_job(root, queue):
    job = queue.add(tiny_job(root, save_lora_name="job"))
    assert queue.finish(job.id, JobStatus.DONE) is None and queue.get(job.id).status is JobStatus.QUEUED
    queue.mark_running(job.id)
    done = queue.finish(job.id, JobStatus.DONE)
    assert done.status is JobStatus.DONE and done.finished >= done.started and queue.state().history() == [done]
    with pytest.raises(UserError, match="only a job that is stopped or interrupted can be resumed"):
        queue.resume(job.id)


def test_the_queue_commands_add_list_move_remove_and_refuse_a_duplicate(root, tmp_path, capsys):
    from traintrain.cli import main

    out = str(tmp_path / "out")
    tiny_job(root).save_json(tmp_path / "job.json")
    for name in ("a", "b"):
        assert main(["queue", "add", "--config", str(tmp_path / "job.json"), "--set", f"save_lora_name={name}",
                     "--output-dir", out]) == 0
    assert "queued job" in capsys.readouterr().out
    assert main(["queue", "add", "--config", str(tmp_path / "job.json"), "--set", "save_lora_name=a",
                 "--output-dir", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "save_lora_name: job " in err and "already saves as 'a'" in err
    a, b = JobQueue(tmp_path / "out").state().queued()
    assert main(["queue", "move", b.id, "1", "--output-dir", out]) == 0
    assert main(["queue", "pause", "--output-dir", out]) == 0
    capsys.readouterr()
    assert main(["queue", "list", "--output-dir", out]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0] == "queued (paused): 2"
    assert listing[1].split()[:3] == ["1", b.id, "b"] and listing[2].split()[:3] == ["2", a.id, "a"]
    assert main(["queue", "remove", b.id, "--output-dir", out]) == 0
    assert main(["queue", "resume", "--output-dir", out]) == 0
    state = JobQueue(tmp_path / "out").state()
    assert [e.id for e in state.queued()] == [a.id] and not state.paused
    assert main(["queue", "remove", "nope", "--output-dir", out]) == 2
    assert main(["queue", "move", a.id, "0", "--output-dir", out]) == 2
