"""Loss logs read back (running, empty, odd files), downsampled for the browser, and `traintrain plot`."""

import math
import os

import numpy as np
import pytest
from PIL import Image

from job_helpers import tiny_job
from traintrain.cli import main
from traintrain.errors import OUTPUT_DIR, UserError
from traintrain.jobs.runner import run_job
from traintrain.training.csv_log import CsvLog
from traintrain.training.loss_history import LossLog, downsample, find_loss_log, latest_loss_log, read_loss_log
from traintrain.training.loss_plot import (
    AVERAGE_LOSS_COLOR,
    LEARNING_RATE_COLOR,
    PLOT_SIZE,
    RAW_LOSS_COLOR,
    loss_figure,
)

SETTINGS = [("mode", "LoRA"), ("phase", "LoRA"), ("save_lora_name", "job"), ("note", "with, comma")]


def write_log(path, losses, settings=SETTINGS):
    """A log written by the real CsvLog; the average is the loop's EMA (factor 0.9)."""
    log, average = CsvLog(path, settings), None
    for step, loss in enumerate(losses, start=1):
        average = loss if average is None else 0.9 * average + 0.1 * loss
        log.add(step, loss, average, 1e-3 * (1 - step / (len(losses) + 1)))
    log.close()
    return path


def run_cli(capsys, *args):
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def pixels(path):
    image = Image.open(path)
    image.verify()  # a complete, valid PNG
    image = Image.open(path)
    assert image.format == "PNG" and image.size == PLOT_SIZE
    return np.asarray(image.convert("RGB")).astype(int)


def colour_pixels(array, colour, tolerance=12):
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(array - rgb).max(axis=2) <= tolerance).sum())


def test_a_running_log_reads_without_its_cut_short_line(tmp_path):
    path = write_log(tmp_path / "a.csv", [0.5, 0.4, 0.3])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("4,0.2")  # the writer was killed (or is still writing) mid-line
    log = read_loss_log(path)
    assert log.settings == {"mode": "LoRA", "phase": "LoRA", "save_lora_name": "job", "note": "with, comma"}
    assert log.steps == [1, 2, 3] and log.loss == [0.5, 0.4, 0.3]
    assert log.loss_average == pytest.approx([0.5, 0.49, 0.471])
    assert log.learning_rate == pytest.approx([7.5e-4, 5e-4, 2.5e-4])
    assert log.run_name == "job (LoRA)"


def test_a_log_that_just_started_is_empty_and_still_plots(tmp_path, capsys):
    path = write_log(tmp_path / "started.csv", [])
    log = read_loss_log(path)
    assert log.steps == log.loss == log.loss_average == log.learning_rate == [] and log.settings["phase"] == "LoRA"
    code, out, err = run_cli(capsys, "plot", path, "--out", tmp_path / "started.png")
    assert code == 0 and "0 steps" in out and err == ""
    assert pixels(tmp_path / "started.png").std() > 0  # axes, title and the "no steps yet" note


def test_latest_log_is_the_newest_and_a_missing_one_names_the_output_folder(tmp_path):
    logs = tmp_path / "logs"
    with pytest.raises(UserError) as missing:
        latest_loss_log(logs)
    assert missing.value.field == OUTPUT_DIR and str(logs) in missing.value.message
    old, new = write_log(logs / "old.csv", [1.0]), write_log(logs / "new.csv", [1.0])
    os.utime(old, (2_000_000_000, 2_000_000_000))  # modified last, although created first
    os.utime(new, (1_900_000_000, 1_900_000_000))
    assert latest_loss_log(logs) == old
    assert find_loss_log("", logs) == old
    assert find_loss_log("new", logs) == find_loss_log("new.csv", logs) == new
    assert find_loss_log(str(new), tmp_path / "elsewhere") == new
    with pytest.raises(UserError):
        find_loss_log("../logs/new.csv", tmp_path / "other")


def test_downsample_bounds_points_and_keeps_ends_and_spikes():
    count = 100_000
    losses = [0.1 + 0.01 * math.sin(step / 50) for step in range(count)]
    losses[31_337], losses[77_777] = 5.0, 0.001  # a spike and a dip
    losses[40_000:40_100] = [math.nan] * 100  # skipped steps
    log = LossLog({"phase": "LoRA"}, list(range(1, count + 1)), losses, losses, [1e-4] * count)
    small = downsample(log, 2000)
    assert 1000 < len(small.steps) <= 2000 and small.settings == log.settings
    assert small.steps[0] == 1 and small.steps[-1] == count and small.steps == sorted(set(small.steps))
    assert 31_338 in small.steps and 77_778 in small.steps
    assert max(small.loss) == 5.0 and min(small.loss) == 0.001
    assert small.loss == [losses[step - 1] for step in small.steps]  # whole rows, all columns together
    assert downsample(small, 2000) is small  # a short log is kept as it is


def test_plot_of_a_real_training_run(tmp_path, capsys):
    config = tiny_job(tmp_path, logging_save_csv=True, train_iterations=6, save_lora_name="plotted")
    run_job(config, output_dir=tmp_path / "out")
    code, out, err = run_cli(capsys, "plot", "--out", tmp_path / "loss.png", "--output-dir", tmp_path / "out")
    assert code == 0 and err == "" and "6 steps" in out and "plotted_" in out
    image = pixels(tmp_path / "loss.png")
    assert image.std() > 10  # not blank
    for colour in (AVERAGE_LOSS_COLOR, RAW_LOSS_COLOR, LEARNING_RATE_COLOR):
        assert colour_pixels(image, colour) > 100, colour  # each line is drawn
    assert not list(tmp_path.glob(".loss.png.*"))  # the temporary file of the atomic write is gone


def test_log_scale(tmp_path, capsys):
    losses = [10.0 ** -(step / 20) for step in range(100)] + [0.0]  # four decades, and a zero (masked)
    path = write_log(tmp_path / "decades.csv", losses)
    assert loss_figure(read_loss_log(path), log_scale=True).axes[0].get_yscale() == "log"
    for scale, target in (([], "linear.png"), (["--log-scale"], "log.png")):
        code, _, err = run_cli(capsys, "plot", path, "--out", tmp_path / target, *scale)
        assert code == 0 and err == ""
    linear, log = pixels(tmp_path / "linear.png"), pixels(tmp_path / "log.png")
    assert colour_pixels(log, AVERAGE_LOSS_COLOR) > 100
    assert np.abs(linear - log).mean() > 1  # the loss lines are placed differently


def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "other.csv").write_text("name,price\napple,3\n")
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)))
    (tmp_path / "broken.csv").write_text("Step,Loss,Loss (average),Learning Rate\n1,0.5,x,1e-4\n")
    write_log(tmp_path / "logs" / "good.csv", [0.5, 0.4])
    cases = [
        ((tmp_path / "missing.csv",), "not found"),
        ((tmp_path / "other.csv",), "not a loss log"),
        ((tmp_path / "binary.csv",), "not a loss log"),
        ((tmp_path / "broken.csv",), "not a loss log"),
        ((tmp_path,), "not found"),  # a folder
        (("--output-dir", tmp_path / "empty"), "--output-dir: no CSV loss log"),
    ]
    for arguments, fragment in cases:
        code, out, err = run_cli(capsys, "plot", *arguments, "--out", tmp_path / "x.png")
        assert code == 2 and out == "", arguments
        assert err.startswith("traintrain: error: ") and err.count("\n") == 1 and fragment in err, (arguments, err)
    code, _, err = run_cli(capsys, "plot", tmp_path / "logs" / "good.csv", "--out", tmp_path / "logs")
    assert code == 2 and "is a folder" in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()
