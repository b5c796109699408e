"""The Gradio app: Train (presets, form, buttons, live progress), Queue, History and Plot tabs.

Jobs run in the job manager's worker processes, never in an event handler: a page that closes
or a job that crashes leaves the app running, and a reopened page polls the same manager.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from traintrain.errors import UserError
from traintrain.jobs.manager import JobManager, ManagerSnapshot
from traintrain.jobs.queue import JobError, JobStatus, QueueEntry
from traintrain.presets.user_store import PresetStore
from traintrain.training.loss_history import LossLog, downsample, find_loss_log, logs_folder, loss_logs, read_loss_log
from traintrain.ui import compat
from traintrain.ui.form import build_form

POLL_SECONDS = 1.0
PLOT_POINTS = 2000
QUEUE_COLUMNS = ["id", "name", "mode", "status", "added"]
HISTORY_COLUMNS = ["id", "name", "mode", "status", "duration", "result", "error"]
UPLOADS = "uploads"


def build_app(manager: JobManager, *, output_dir: Path, lists: Callable[[], dict[str, list[str]]] | None = None,
              title: str = "TrainTrain") -> gr.Blocks:
    """The app's Blocks, unlaunched (the Web-UI extension renders the same Blocks in its tab); `lists`
    gives the host's models and VAEs (see `host.picker_lists`)."""
    output_dir = Path(output_dir)
    presets = PresetStore(output_dir / "presets")
    list_choices = lists or dict
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        with gr.Tab("Train", id="tt-tab-train"):
            with gr.Row():
                preset = gr.Dropdown(presets.names(), value=None, label="preset", elem_id="tt-preset")
                load_preset = gr.Button("Load preset", elem_id="tt-load-preset")
                preset_name = gr.Textbox(label="save as", placeholder="preset name", elem_id="tt-preset-name")
                overwrite = gr.Checkbox(label="overwrite", value=False, elem_id="tt-preset-overwrite")
                save_preset = gr.Button("Save preset", elem_id="tt-save-preset")
                delete_preset = gr.Button("Delete preset", elem_id="tt-delete-preset")
                import_preset = gr.UploadButton("Import settings JSON", file_types=[".json"],
                                                elem_id="tt-import-preset")
            preset_status = gr.Markdown(elem_id="tt-preset-status")
            form = build_form(list_choices())
            with gr.Row():
                upload_original = gr.UploadButton("Upload original image", file_types=["image"],
                                                  elem_id="tt-upload-original")
                upload_target = gr.UploadButton("Upload target image", file_types=["image"],
                                                elem_id="tt-upload-target")
            with gr.Row():
                start = gr.Button("Start Training", variant="primary", elem_id="tt-start")
                enqueue = gr.Button("Add to Queue", elem_id="tt-enqueue")
                stop = gr.Button("Stop and Save", elem_id="tt-stop")
                cancel = gr.Button("Cancel", variant="stop", elem_id="tt-cancel")
            status = gr.Markdown(elem_id="tt-status")
            progress = gr.Markdown("No job is training.", elem_id="tt-progress")
            with gr.Row():
                loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="loss", elem_id="tt-loss-plot")
                log_scale = gr.Checkbox(label="log scale", value=False, elem_id="tt-log-scale")
            previews = gr.Gallery(label="previews", columns=4, height=280, elem_id="tt-previews")
            messages = gr.Textbox(label="messages", lines=6, max_lines=20, interactive=False, elem_id="tt-messages")
        with gr.Tab("Queue", id="tt-tab-queue"):
            queue_table = gr.Dataframe(headers=QUEUE_COLUMNS, interactive=False, elem_id="tt-queue")
            paused = gr.Checkbox(label="pause the queue (the running job goes on)", elem_id="tt-pause")
            with gr.Row():
                job_id = gr.Textbox(label="job id", elem_id="tt-job-id")
                up = gr.Button("Move up", elem_id="tt-move-up")
                down = gr.Button("Move down", elem_id="tt-move-down")
                remove = gr.Button("Remove", elem_id="tt-remove")
                duplicate = gr.Button("Duplicate", elem_id="tt-duplicate")
                to_form = gr.Button("Load into form", elem_id="tt-to-form")
                edit = gr.Button("Update from form", elem_id="tt-edit")
                resume = gr.Button("Resume", elem_id="tt-resume")
                requeue = gr.Button("Requeue", elem_id="tt-requeue")
            queue_status = gr.Markdown(elem_id="tt-queue-status")
        with gr.Tab("History", id="tt-tab-history"):
            history_table = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, elem_id="tt-history")
            with gr.Row():
                history_id = gr.Textbox(label="job id", elem_id="tt-history-id")
                show = gr.Button("Show", elem_id="tt-history-show")
                history_to_form = gr.Button("Load these settings into the form", elem_id="tt-history-to-form")
                history_resume = gr.Button("Resume", elem_id="tt-history-resume")
                history_requeue = gr.Button("Requeue", elem_id="tt-history-requeue")
            history_status = gr.Markdown(elem_id="tt-history-status")
            history_files = gr.Textbox(label="files", lines=4, interactive=False, elem_id="tt-history-files")
            history_previews = gr.Gallery(label="previews", columns=4, height=240, elem_id="tt-history-previews")
            history_log = gr.Textbox(label="log", lines=8, interactive=False, elem_id="tt-history-log")
            history_settings = gr.Code(label="settings", language="json", elem_id="tt-history-settings")
        with gr.Tab("Plot", id="tt-tab-plot"):
            with gr.Row():
                csv_choice = gr.Dropdown(label="log (empty = the latest)", choices=[], allow_custom_value=False,
                                         elem_id="tt-plot-csv")
                plot_log_scale = gr.Checkbox(label="log scale", value=False, elem_id="tt-plot-log-scale")
                draw = gr.Button("Plot", elem_id="tt-plot-draw")
            plot_status = gr.Markdown(elem_id="tt-plot-status")
            csv_loss = gr.LinePlot(x="step", y="loss", color="series", title="loss", elem_id="tt-plot-loss")
            csv_lr = gr.LinePlot(x="step", y="learning rate", title="learning rate", elem_id="tt-plot-lr")

        field_outputs = list(form.components.values())
        form_outputs = form.inputs

        # ---- the form and presets
        mode_box = form.components["mode"]
        visibility_outputs = [*form.components.values(), form.second_pass_panel]
        mode_box.change(form.visibility_updates, mode_box, visibility_outputs)
        def refresher(name: str) -> Callable[[], Any]:
            return lambda: gr.update(choices=list_choices().get(name, []))

        for name, button in form.refresh_buttons.items():
            button.click(refresher(name), None, form.components[name])

        def load_named_preset(name):
            try:
                config = presets.load(name)
            except UserError as error:
                return [_error_text(error), *[gr.update() for _ in form_outputs]]
            return [f"Loaded preset **{name}**.", *form.values_of(config, list_choices())]

        load_preset.click(load_named_preset, preset, [preset_status, *form_outputs])

        def save_named_preset(name, allow_overwrite, *values):
            try:
                path = presets.save(name, form.config_from(*values), overwrite=allow_overwrite)
            except UserError as error:
                return _error_text(error), gr.update()
            return f"Saved preset **{path.stem}**.", gr.update(choices=presets.names(), value=path.stem)

        save_preset.click(save_named_preset, [preset_name, overwrite, *form_outputs], [preset_status, preset])

        def delete_named_preset(name):
            try:
                presets.delete(name)
            except UserError as error:
                return _error_text(error), gr.update()
            return f"Deleted preset **{name}**.", gr.update(choices=presets.names(), value=None)

        delete_preset.click(delete_named_preset, preset, [preset_status, preset])

        def import_settings(file, allow_overwrite):
            try:
                name, config = presets.import_file(Path(_upload_path(file)), overwrite=allow_overwrite)
            except UserError as error:
                return [_error_text(error), gr.update(), *[gr.update() for _ in form_outputs]]
            return [f"Imported preset **{name}**.", gr.update(choices=presets.names(), value=name),
                    *form.values_of(config, list_choices())]

        import_preset.upload(import_settings, [import_preset, overwrite], [preset_status, preset, *form_outputs])

        for button, name in ((upload_original, "original_image"), (upload_target, "target_image")):
            button.upload(lambda file: _keep_upload(file, output_dir), button, form.components[name])

        # ---- running
        def submit(action: Callable, *values):
            try:
                config = form.config_from(*values)
                entry = action(config)
            except UserError as error:
                return [_error_text(error), *form.field_error_updates(error)]
            verb = "started" if action == manager.start else "queued"
            return [f"Job **{entry.id}** ({entry.name}) {verb}.", *form.field_error_updates(None)]

        start.click(lambda *v: submit(manager.start, *v), form_outputs, [status, *field_outputs])
        enqueue.click(lambda *v: submit(manager.enqueue, *v), form_outputs, [status, *field_outputs])
        stop.click(lambda: "Stopping after this step; the job saves a file and a state." if manager.stop_and_save()
                   else "No job is training.", None, status)
        cancel.click(lambda: "Cancelled: nothing was saved." if manager.cancel() else "No job is training.",
                     None, status)

        # Failed jobs this page has shown (None until its first poll: failures from before it opened
        # are in the History tab, not announced again).
        shown_failures = gr.State(None)

        def refresh(log_axis, shown):
            snapshot = manager.snapshot()
            failed = [entry for entry in snapshot.history if entry.status is JobStatus.FAILED]
            new = [entry for entry in failed if shown is not None and entry.id not in shown]
            if new:  # a job failed in its worker: its words in the status line, its field marked
                entry = new[0]
                words = _error_text(entry.error) if entry.error else "it stopped without a message"
                failure = [f"Job **{entry.id}** ({entry.name}) failed: {words}", *form.field_error_updates(entry.error)]
            else:
                failure = [gr.update() for _ in range(1 + len(field_outputs))]
            return [*_running_outputs(snapshot, log_axis), _queue_rows(snapshot), _history_rows(snapshot),
                    snapshot.paused, [entry.id for entry in failed], *failure]

        live_outputs = [progress, loss_plot, previews, messages, queue_table, history_table, paused,
                        shown_failures, status, *field_outputs]
        compat.poll(app, POLL_SECONDS, refresh, [log_scale, shown_failures], live_outputs)
        app.load(refresh, [log_scale, shown_failures], live_outputs)
        app.load(form.visibility_updates, mode_box, visibility_outputs)
        app.load(lambda: gr.update(choices=[p.name for p in loss_logs(logs_folder(output_dir))]), None, csv_choice)
        paused.input(lambda value: manager.pause(value), paused, None)

        # ---- queue and history
        def act(action: Callable[[str], object], done: str):
            def handler(identifier):
                try:
                    action(identifier.strip())
                except UserError as error:
                    return _error_text(error)
                return done.format(id=identifier.strip())
            return handler

        def move_by(identifier: str, delta: int) -> None:
            snapshot = manager.snapshot()
            ids = [entry.id for entry in snapshot.queued]
            if identifier not in ids:
                raise UserError(f"job {identifier} is not queued", "give the id of a queued job")
            manager.move(identifier, max(0, ids.index(identifier) + delta))

        up.click(act(lambda i: move_by(i, -1), "Moved job {id} up."), job_id, queue_status)
        down.click(act(lambda i: move_by(i, 1), "Moved job {id} down."), job_id, queue_status)
        remove.click(act(manager.remove, "Removed job {id}."), job_id, queue_status)
        duplicate.click(act(manager.duplicate, "Duplicated job {id}."), job_id, queue_status)
        resume.click(act(manager.resume, "Job {id} will continue from its state."), job_id, queue_status)
        requeue.click(act(manager.requeue, "Job {id} is queued again."), job_id, queue_status)
        history_resume.click(act(manager.resume, "Job {id} will continue from its state."), history_id,
                             history_status)
        history_requeue.click(act(manager.requeue, "Job {id} is queued again."), history_id, history_status)

        def settings_to_form(identifier):
            try:
                config = manager.queue.get(identifier.strip()).config()
            except UserError as error:
                return [_error_text(error), *[gr.update() for _ in form_outputs]]
            return [f"Settings of job {identifier.strip()} are in the form (Train tab).",
                    *form.values_of(config, list_choices())]

        to_form.click(settings_to_form, job_id, [queue_status, *form_outputs])
        history_to_form.click(settings_to_form, history_id, [history_status, *form_outputs])

        def edit_queued(identifier, *values):
            try:
                manager.edit(identifier.strip(), form.config_from(*values))
            except UserError as error:
                return _error_text(error)
            return f"Job {identifier.strip()} now has the form's settings."

        edit.click(edit_queued, [job_id, *form_outputs], queue_status)

        def show_job(identifier):
            try:
                entry = manager.queue.get(identifier.strip())
                view = manager.view(entry.id)
            except UserError as error:
                return _error_text(error), "", [], "", ""
            files = [*view.loras, *view.logs, *([view.state] if view.state else [])]
            log = "\n".join(f"[{m.level}] {m.text}" for m in view.messages)
            if entry.error:
                log += f"\n[error] {entry.error.message}"
            return (f"Job {entry.id} ({entry.name}): {entry.status.value}.", "\n".join(files),
                    _existing(view.previews), log, json.dumps(entry.settings, indent=2))

        show.click(show_job, history_id, [history_status, history_files, history_previews, history_log,
                                          history_settings])

        # ---- plot of a CSV log
        def draw_csv(name, log_axis):
            try:
                # Only logs of this output folder: the browser never names another file.
                path = find_loss_log(Path(name).name if name else None, logs_folder(output_dir))
                log = downsample(read_loss_log(path), PLOT_POINTS)
            except UserError as error:
                return _error_text(error), None, None
            rate = pd.DataFrame({"step": log.steps, "learning rate": log.learning_rate})
            return f"{path.name}: {len(log.steps)} points.", _loss_frame(log, log_axis), rate

        draw.click(draw_csv, [csv_choice, plot_log_scale], [plot_status, csv_loss, csv_lr])
    return app


def _running_outputs(snapshot: ManagerSnapshot, log_axis: bool) -> list:
    running = snapshot.running
    if running is None:
        notices = "\n".join(snapshot.notices)
        return ["No job is training." + (f"\n\n{notices}" if notices else ""), gr.update(), gr.update(), gr.update()]
    entry, view = running.entry, running.view
    parts = [f"**{entry.name}** (job {entry.id}, {entry.settings.get('mode')})"]
    if view.total:
        parts.append(f"{view.phase}: step {view.step} / {view.total}")
    if view.loss is not None:
        parts.append(f"loss {view.loss:.4g} (average {view.loss_average:.4g})")
    if view.learning_rate is not None:
        parts.append(f"lr {view.learning_rate:.3g}")
    if view.steps_per_second:
        parts.append(f"{view.steps_per_second:.2f} it/s, ETA {_duration(view.eta)}")
    percent = 100.0 * view.step / view.total if view.total else 0.0
    bar = f'<progress id="tt-progress-bar" max="100" value="{percent:.1f}"></progress>'
    log = LossLog(steps=[p.step for p in view.series], loss=[p.loss for p in view.series],
                  loss_average=[p.average for p in view.series], learning_rate=[p.learning_rate for p in view.series])
    text = "\n".join(f"[{m.level}] {m.text}" for m in view.messages[-200:])
    # No frame before the first step: the page takes the colours' domain from the first frame it
    # draws and keeps it, so an empty one would leave every later line without a colour.
    plot = _loss_frame(downsample(log, PLOT_POINTS), log_axis) if log.steps else None
    return [" · ".join(parts) + "\n\n" + bar, plot,
            _existing(view.previews), text]


def _loss_frame(log: LossLog, log_axis: bool) -> pd.DataFrame:
    """Raw and averaged loss as one long table (the plot colours by series); log10 for the log scale."""
    def scale(values):
        return [math.log10(v) if v > 0 else None for v in values] if log_axis else list(values)

    rows = {"step": log.steps * 2, "loss": scale(log.loss) + scale(log.loss_average),
            "series": ["loss"] * len(log.steps) + ["average"] * len(log.steps)}
    # Typed even when empty: an untyped empty column would make "series" a number (a colour gradient).
    return pd.DataFrame(rows).astype({"step": "int64", "loss": "float64", "series": "string"})


def _queue_rows(snapshot: ManagerSnapshot) -> pd.DataFrame:
    entries = ([snapshot.running.entry] if snapshot.running else []) + snapshot.queued
    return pd.DataFrame([[e.id, e.name, e.settings.get("mode"), e.status.value, _clock(e.created)] for e in entries],
                        columns=QUEUE_COLUMNS)


def _history_rows(snapshot: ManagerSnapshot) -> pd.DataFrame:
    rows = [[e.id, e.name, e.settings.get("mode"), e.status.value, _duration(_took(e)),
             ", ".join(Path(p).name for p in e.files.loras), e.error.message if e.error else ""]
            for e in snapshot.history]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def _took(entry: QueueEntry) -> float:
    return (entry.finished or time.time()) - (entry.started or entry.created)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _existing(paths: list[str]) -> list[str]:
    return [path for path in paths if Path(path).is_file()]


def _error_text(error: UserError | JobError) -> str:
    where = f"**{error.field}**: " if error.field else ""
    return f"⚠ {where}{error.message}"


def _upload_path(file) -> str:
    return file if isinstance(file, str) else file.name


def _keep_upload(file, output_dir: Path) -> str:
    """An uploaded image is copied into the output folder (Gradio's temp copy may vanish)."""
    source = Path(_upload_path(file))
    folder = output_dir / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    shutil.copyfile(source, target)
    return str(target)

