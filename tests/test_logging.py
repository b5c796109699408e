"""CSV log layout and rows, per-phase files, TensorBoard events, verbose set-up lines."""

import re
import sys

import pytest

from job_helpers import tiny_job
from traintrain.config import TrainConfig
from traintrain.errors import UserError
from traintrain.jobs.runner import run_job
from traintrain.training.csv_log import HEADER, CsvLog, read_csv_log
from traintrain.training.events import Message, Progress
from traintrain.training.run_logs import RunLogs, check_logging


def test_csv_log_of_a_job(tmp_path):
    config = tiny_job(tmp_path, logging_save_csv=True, train_iterations=4, train_seed=-1)
    events = []
    result = run_job(config, output_dir=tmp_path / "out", report=events.append)
    files = list((tmp_path / "out" / "logs").glob("*.csv"))
    assert len(files) == 1 and re.fullmatch(r"job_\d{8}-\d{6}\.csv", files[0].name)
    lines = files[0].read_text().splitlines()
    assert "Step,Loss,Loss (average),Learning Rate" in lines
    settings, rows = read_csv_log(files[0])
    assert settings["seed"] == str(result.seed) and settings["train_optimizer"] == "AdamW"
    progress = [e for e in events if isinstance(e, Progress)]
    assert [row["Step"] for row in rows] == [1, 2, 3, 4]
    assert [row["Loss"] for row in rows] == result.losses
    assert [row["Loss (average)"] for row in rows] == [e.loss_average for e in progress]
    assert [row["Learning Rate"] for row in rows] == [e.learning_rate for e in progress]
    average = result.losses[0]
    for loss, row in zip(result.losses[1:], rows[1:]):
        average = 0.9 * average + 0.1 * loss
        assert row["Loss (average)"] == pytest.approx(average)


def test_no_logs_unless_asked(tmp_path):
    run_job(tiny_job(tmp_path, train_iterations=1), output_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "logs").exists() and not (tmp_path / "out" / "json").exists()


def test_rows_are_on_disk_at_once(tmp_path):
    log = CsvLog(tmp_path / "a.csv", [("seed", 3), ("note", "with, comma")])
    log.add(1, 0.5, 0.5, 1e-4)
    settings, rows = read_csv_log(tmp_path / "a.csv")  # read while the log is still open
    assert settings == {"seed": "3", "note": "with, comma"}
    assert rows == [{"Step": 1, "Loss": 0.5, "Loss (average)": 0.5, "Learning Rate": 1e-4}]
    log.close()
    assert (tmp_path / "a.csv").read_text().splitlines()[2] == ",".join(HEADER)


def progress(phase, step, total):
    return Progress(phase, step, total, 1.0 / step, 1.0, 1e-4, 0.0, 0.0)


def test_later_phases_and_same_second_jobs_get_their_own_files(tmp_path):
    config = TrainConfig(save_lora_name="slider", logging_save_csv=True)
    for _ in range(2):  # two jobs started in the same second
        logs = RunLogs(config, tmp_path, seed=1, report=lambda event: None, now=1_700_000_000)
        for phase in ("copier", "difference"):
            for step in (1, 2):
                logs(progress(phase, step, 2))
    stamp = re.compile(r"\d{8}-\d{6}")
    names = sorted(stamp.sub("T", p.name) for p in (tmp_path / "logs").iterdir())
    assert names == ["slider_T-2.csv", "slider_T.csv", "slider_difference_T-2.csv", "slider_difference_T.csv"]
    for path in (tmp_path / "logs").iterdir():
        settings, rows = read_csv_log(path)
        assert settings["phase"] in path.name or settings["phase"] == "copier"
        assert [row["Step"] for row in rows] == [1, 2]


def test_tensorboard_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = TrainConfig(save_lora_name="tb", logging_tensorboard=True)
    logs = RunLogs(config, tmp_path, seed=1, report=lambda event: None)
    for step in (1, 2, 3):
        logs(progress("LoRA", step, 3))
    folder = tmp_path / "logs" / "tensorboard" / "tb"
    events = EventAccumulator(str(folder))
    events.Reload()
    assert {"LoRA/loss", "LoRA/loss_average", "LoRA/learning_rate"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("LoRA/loss")] == [1, 2, 3]
    assert events.Scalars("LoRA/loss")[2].value == pytest.approx(1 / 3)


def test_missing_tensorboard_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match="pip install tensorboard"):
        check_logging(TrainConfig(logging_tensorboard=True))


def test_verbose_describes_the_optimizer_and_schedule(tmp_path):
    events = []
    config = tiny_job(tmp_path, logging_verbose=True, train_iterations=1, train_optimizer="Lion",
                      train_lr_scheduler="step", train_lr_step_rules="10:0.5")
    run_job(config, output_dir=tmp_path / "out", report=events.append)
    texts = [e.text for e in events if isinstance(e, Message)]
    assert any("optimizer lion_pytorch.Lion" in t and "lr schedule: step" in t for t in texts)
