"""The web UI end to end in a real headless Chromium: train, queue, stop and resume, errors at their field."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import gradio as gr
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers import a1111_vae_state, tiny_components
from sample_images import write_demo_images
from traintrain.config import TrainConfig
from traintrain.jobs.runner import run_job
from traintrain.models.tiny import write_tiny_model
from traintrain.training.loss_history import LossLog
from traintrain.ui.app import _loss_frame
from ui_browser import (
    browser_page,
    choose,
    click_and_read,
    fill_job,
    free_port,
    history_row,
    job_id_in,
    line_colours,
    load_preset,
    open_app,
    require_browser,
    set_field,
    type_free_value,
    wait_for_port,
    wait_for_text,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    write_tiny_model("sd1", "single-file", root / "models" / "tiny.safetensors")
    write_demo_images(root / "images")
    (root / "empty").mkdir()
    return root


@pytest.fixture(scope="module")
def app(world):
    """The app served in this process (the jobs still run in worker processes)."""
    require_browser()
    from traintrain.ui.server import ServeOptions, serve

    port = free_port()
    blocks, manager = serve(ServeOptions(output_dir=world / "out", models_dir=world / "models", port=port),
                            block=False)
    yield f"http://127.0.0.1:{port}/", manager, world
    blocks.close()
    manager.close()


def test_train_a_lora_from_the_shipped_preset(app, tmp_path):
    url, manager, world = app
    with browser_page(tmp_path / "shots", "train") as page:
        open_app(page, url)
        load_preset(page, "LoRA")
        fill_job(page, model=str(world / "models" / "tiny.safetensors"), data=str(world / "images"),
                 name="first", iterations=3)
        page.locator("#tt-logging-save-csv input").check()
        vae = world / "models" / "VAE" / "tiny-vae.safetensors"  # added while the page is open
        vae.parent.mkdir(exist_ok=True)
        save_file(a1111_vae_state(tiny_components(seed=0).vae), str(vae))
        page.get_by_role("button", name="Refresh VAEs").click()
        choose(page, "tt-model-vae", str(vae))
        job = job_id_in(click_and_read(page, "Start Training", expect="started"))
        history_row(page, job, "done")
        page.get_by_role("tab", name="Plot").click()
        assert "3 points" in click_and_read(page, "Plot", "tt-plot-status", expect="points")
        assert len(line_colours(page, "tt-plot-loss")) == 2 and all(line_colours(page, "tt-plot-loss"))
    with safe_open(str(world / "out" / "first.safetensors"), "pt") as saved:
        assert saved.metadata()["ss_vae_name"] == "tiny-vae.safetensors"
    first = next(entry for entry in manager.snapshot().history if entry.id == job)
    config = TrainConfig.from_json_dict(first.settings)  # what the form sent
    assert config.train_iterations == 3 and config.image_size == [64, 64] and config.mode == "LoRA"
    assert config.model_vae == str(vae)


def test_a_job_added_while_one_trains_runs_after_it(app, tmp_path):
    url, manager, world = app
    with browser_page(tmp_path / "shots", "queue") as page:
        open_app(page, url)
        load_preset(page, "LoRA")
        fill_job(page, model=str(world / "models" / "tiny.safetensors"), data=str(world / "images"),
                 name="long", iterations=150)  # still training after the second tab's round trip on a busy CI
        first = job_id_in(click_and_read(page, "Start Training", expect="started"))
        reopened = page.context.browser.new_page()  # another tab, as after closing the browser: the job goes on
        open_app(reopened, url)
        wait_for_text(reopened, "tt-progress", r"long \(job")
        reopened.close()
        set_field(page, "save_lora_name", "after")
        set_field(page, "train_iterations", "2")
        busy = click_and_read(page, "Start Training", expect="is training")
        assert "add this job to the queue" in busy
        second = job_id_in(click_and_read(page, "Add to Queue", expect="queued"))
        set_field(page, "save_lora_name", "after")
        refused = click_and_read(page, "Add to Queue", expect="save_lora_name")
        assert "after" in refused  # the same name again is refused, in the page
        history_row(page, first, "done")
        history_row(page, second, "done")
    finished = {entry.id: entry for entry in manager.snapshot().history}
    assert finished[first].finished <= finished[second].started
    assert (world / "out" / "after.safetensors").is_file()


def test_stop_and_save_then_resume_ends_as_an_uninterrupted_run(app, tmp_path):
    url, manager, world = app
    with browser_page(tmp_path / "shots", "stop") as page:
        open_app(page, url)
        load_preset(page, "LoRA")
        fill_job(page, model=str(world / "models" / "tiny.safetensors"), data=str(world / "images"),
                 name="stopped", iterations=40, train_seed=11)
        job = job_id_in(click_and_read(page, "Start Training", expect="started"))
        wait_for_text(page, "tt-progress", r"step ([3-9]|\d\d) / 40")
        colours = line_colours(page, "tt-loss-plot")
        assert len(colours) == 2 and all(colours) and colours[0] != colours[1], colours  # raw and average
        click_and_read(page, "Stop and Save", expect="Stopping")
        history_row(page, job, "stopped")
        saved = sorted((world / "out").glob("stopped_*steps.safetensors"))
        assert saved and sorted((world / "out").glob("stopped_*steps.state"))
        load_file(str(saved[0]))  # loadable
        page.get_by_role("tab", name="History").click()
        set_field(page, "history_id", job)
        click_and_read(page, "Resume", "tt-history-status", expect="continue")
        page.get_by_role("tab", name="Train").click()
        history_row(page, job, "done")
    config = manager.queue.get(job).config().with_values(save_lora_name="reference")
    run_job(config, output_dir=tmp_path / "reference")
    resumed = load_file(str(world / "out" / "stopped.safetensors"))
    reference = load_file(str(tmp_path / "reference" / "reference.safetensors"))
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[key], reference[key]) for key in reference)


def test_an_empty_data_folder_is_shown_at_its_field_and_the_app_goes_on(app, tmp_path):
    url, manager, world = app
    with browser_page(tmp_path / "shots", "error") as page:
        open_app(page, url)
        load_preset(page, "LoRA")
        fill_job(page, model=str(world / "models" / "tiny.safetensors"), data=str(world / "empty"),
                 name="nothing", iterations=2)
        status = click_and_read(page, "Start Training", expect="lora_data_directory")
        field_info = page.locator("#tt-lora-data-directory").inner_text()
        words = status.split("lora_data_directory: ", 1)[1].strip()  # after any earlier job's progress line
        assert "no images" in words.lower() or "no image" in words.lower(), words
        assert words[:40] in field_info
        # A model file that is a LoRA passes the form's checks and fails in the job's worker: the
        # page still says so in the status line and marks the field.
        lora = world / "models" / "a_lora.safetensors"
        save_file({"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(2, 32),
                   "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.zeros(32, 2)}, str(lora))
        set_field(page, "lora_data_directory", str(world / "images"))
        type_free_value(page, "tt-model", str(lora))
        failed = job_id_in(click_and_read(page, "Start Training", expect="(nothing)"))  # "started", or already "failed"
        status = wait_for_text(page, "tt-status", rf"{failed}[\s\S]*failed")
        assert "model" in status and "not a model" in status, status
        assert "not a model" in page.locator("#tt-model").inner_text()
        history_row(page, failed, "failed")
        type_free_value(page, "tt-model", str(world / "models" / "tiny.safetensors"))
        set_field(page, "save_lora_name", "recovered")
        job = job_id_in(click_and_read(page, "Start Training", expect="started"))
        assert "not a model" not in page.locator("#tt-model").inner_text()  # the mark is gone
        history_row(page, job, "done")


def test_the_queue_order_changes_by_move(app, tmp_path):
    url, manager, world = app
    manager.pause(True)
    try:
        with browser_page(tmp_path / "shots", "move") as page:
            open_app(page, url)
            load_preset(page, "LoRA")
            fill_job(page, model=str(world / "models" / "tiny.safetensors"), data=str(world / "images"),
                     name="m1", iterations=2)
            one = job_id_in(click_and_read(page, "Add to Queue", expect="(m1) queued"))
            set_field(page, "save_lora_name", "m2")
            two = job_id_in(click_and_read(page, "Add to Queue", expect="(m2) queued"))
            page.get_by_role("tab", name="Queue").click()
            set_field(page, "job_id", two)
            click_and_read(page, "Move up", "tt-queue-status", expect="up")
            assert [entry.id for entry in manager.snapshot().queued][:2] == [two, one]
            wait_for_text(page, "tt-queue", rf"{two}[\s\S]*{one}")
            for job in (one, two):
                set_field(page, "job_id", job)
                click_and_read(page, "Remove", "tt-queue-status", expect="Removed")
    finally:
        manager.pause(False)


def test_a_killed_app_shows_the_job_interrupted_and_resume_completes_it(world, tmp_path):
    require_browser()
    out, port = tmp_path / "out", free_port()
    command = [sys.executable, "-m", "traintrain", "ui", "--port", str(port), "--output-dir", str(out),
               "--models-dir", str(world / "models")]

    def start_app():
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert "serving the web UI" in process.stdout.readline()
        wait_for_port(port)
        return process

    process = start_app()
    url = f"http://127.0.0.1:{port}/"
    try:
        with browser_page(tmp_path / "shots", "killed") as page:
            open_app(page, url)
            load_preset(page, "LoRA")
            fill_job(page, model=str(world / "models" / "tiny.safetensors"), data=str(world / "images"),
                     name="killed", iterations=60)
            job = job_id_in(click_and_read(page, "Start Training", expect="started"))
            wait_for_text(page, "tt-progress", r"step ([2-9]|\d\d) / 60")
            os.kill(process.pid, signal.SIGKILL)
            process.wait(30)
            process = start_app()
            open_app(page, url)
            history_row(page, job, "interrupted", timeout=120)
            page.get_by_role("tab", name="History").click()
            set_field(page, "history_id", job)
            click_and_read(page, "Resume", "tt-history-status", expect="continue")
            page.get_by_role("tab", name="Train").click()
            history_row(page, job, "done")
        assert (out / "killed.safetensors").is_file()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def test_listening_without_a_password_refuses_to_start(capsys):
    from traintrain.cli import main

    assert main(["ui", "--listen", "--port", str(free_port())]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--listen" in error[0] and "password" in error[0]


def test_files_outside_the_output_folder_are_not_served(app):
    import urllib.error
    import urllib.request

    url, _, world = app
    for path in ("/etc/passwd", str(world / "models" / "tiny.safetensors")):
        try:
            with urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        assert status in (403, 404), path


def test_the_loss_plot_colours_by_series_from_a_jobs_first_empty_frame():
    """The page keeps the first frame's colour scale: series must be nominal before any step."""
    plot = gr.LinePlot(x="step", y="loss", color="series")
    for steps in ([], [1, 2]):
        log = LossLog(steps=steps, loss=[0.5] * len(steps), loss_average=[None] * len(steps),
                      learning_rate=[1e-4] * len(steps))
        sent = plot.postprocess(_loss_frame(log, log_axis=False))
        assert sent.datatypes == {"step": "quantitative", "loss": "quantitative", "series": "nominal"}
