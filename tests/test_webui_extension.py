"""The Web-UI extension (webui_extension/): its tab loaded as the Web-UI loads scripts, against a stand-in
of the host functions it uses (tests/webui_host_standin/), in a folder laid out like a Web-UI.

Signatures follow AUTOMATIC1111 1.10 and Forge: `modules/script_callbacks.py: on_ui_tabs`,
`modules/call_queue.py: queue_lock`, `modules/sd_models.py: list_models / checkpoints_list /
unload_model_weights(sd_model=None, info=None) / reload_model_weights(sd_model=None, info=None,
forced_reload=False)`, Forge `modules/sd_models.py: forge_model_reload()` and
`backend/memory_management.py: unload_all_models()`, `modules/shared.py: cmd_opts.lora_dir / ckpt_dir`,
`modules/paths.py: models_path`, `modules/sd_vae.py: refresh_vae_list / vae_dict`,
`launch.py / modules/launch_utils.py: run_pip, is_installed`.
The host loads `scripts/*.py` by file path as modules of unique names (`modules/script_loading.py:
load_module`, with importlib.util.spec_from_file_location).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import pytest

from job_helpers import tiny_job
from traintrain.jobs.queue import JobStatus
from traintrain.ui.host import HostJobHooks, StandaloneHost, host_manager

REPO = Path(__file__).resolve().parents[1]
EXTENSION = REPO / "webui_extension"
STANDIN = Path(__file__).resolve().parent / "webui_host_standin"


@pytest.fixture
def webui(tmp_path, monkeypatch):
    """A Web-UI folder with one checkpoint, an empty LoRA folder and the extension in extensions/."""
    root = tmp_path / "webui"
    checkpoint = root / "models" / "Stable-diffusion" / "tiny.safetensors"
    checkpoint.parent.mkdir(parents=True)
    tiny_job(tmp_path)  # writes tmp_path/tiny.safetensors and the images
    shutil.copyfile(tmp_path / "tiny.safetensors", checkpoint)
    shutil.copytree(tmp_path / "tiny.tokenizer", checkpoint.with_suffix(".tokenizer"))  # its tiny vocabulary
    (root / "models" / "Lora").mkdir()
    extension = root / "extensions" / "traintrain"
    shutil.copytree(EXTENSION / "scripts", extension / "scripts")
    yield root
    for name in [name for name in sys.modules if name.split(".")[0] in ("modules", "backend", "modules_forge")]:
        del sys.modules[name]


def load_tab_script(root: Path, monkeypatch, forge: bool = False):
    """As the host does: its modules importable, then the script executed from its path under a unique name."""
    monkeypatch.syspath_prepend(str(STANDIN))
    if forge:
        monkeypatch.syspath_prepend(str(STANDIN / "forge"))
    from modules import paths, shared
    from modules.host_calls import calls

    calls.clear()
    paths.models_path = str(root / "models")
    shared.cmd_opts.lora_dir = str(root / "models" / "Lora")
    path = root / "extensions" / "traintrain" / "scripts" / "traintrain_tab.py"
    spec = importlib.util.spec_from_file_location(f"traintrain_tab_{time.time_ns()}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tabs():
    from modules import script_callbacks

    return script_callbacks.ui_tabs_callback()


def test_the_tab_is_registered_and_returns_the_apps_blocks_on_the_hosts_paths(webui, monkeypatch):
    script = load_tab_script(webui, monkeypatch)
    [(blocks, title, elem_id)] = tabs()
    assert isinstance(blocks, gr.Blocks) and (title, elem_id) == ("TrainTrain", "traintrain")
    host = script.webui_host()
    assert host.list_models() == [str(webui / "models" / "Stable-diffusion" / "tiny.safetensors")]
    assert host.lora_dir == webui / "models" / "Lora"
    assert host.data_dir == webui / "extensions" / "traintrain" / "data"
    with gr.Blocks() as parent, gr.Tabs(), gr.TabItem(title, id=elem_id):  # as the host's create_ui renders tabs
        blocks.render()
    assert parent.blocks
    manager = host_manager(host)
    assert tabs()[0][0] is not blocks and host_manager(script.webui_host()) is manager  # a rebuilt UI, one manager
    manager.close()


def test_ckpt_dir_models_are_listed_too(webui, monkeypatch, tmp_path):
    script = load_tab_script(webui, monkeypatch)
    from modules import shared

    extra = tmp_path / "more"
    extra.mkdir()
    shutil.copyfile(tmp_path / "tiny.safetensors", extra / "other.ckpt")
    shared.cmd_opts.ckpt_dir = str(extra)
    assert str(extra / "other.ckpt") in script.webui_host().list_models()
    shared.cmd_opts.ckpt_dir = None


def test_the_vae_picker_lists_the_hosts_vae_folder_and_vaes_beside_checkpoints(webui, monkeypatch):
    script = load_tab_script(webui, monkeypatch)
    folder = webui / "models" / "VAE"
    folder.mkdir()
    files = [folder / "vae-ft-mse-840000.safetensors", webui / "models" / "Stable-diffusion" / "tiny.vae.pt"]
    for path in files:
        path.write_bytes(b"")
    assert script.webui_host().list_vaes() == sorted(map(str, files))


@pytest.mark.parametrize("forge, unload, reload", [
    (False, "unload_model_weights", "reload_model_weights"),
    (True, "unload_all_models", "forge_model_reload"),
])
def test_each_host_frees_and_reloads_its_model_with_its_own_calls_inside_the_lock(webui, monkeypatch, forge, unload,
                                                                                  reload):
    script = load_tab_script(webui, monkeypatch, forge=forge)
    from modules.host_calls import names

    hooks = HostJobHooks(script.webui_host())
    hooks.before_job()
    hooks.after_job()
    assert names() == ["acquire", unload, reload, "release"]


def test_a_job_holds_the_lock_frees_the_model_and_saves_into_the_lora_folder(webui, monkeypatch, tmp_path):
    forge, unload, reload = False, "unload_model_weights", "reload_model_weights"
    script = load_tab_script(webui, monkeypatch)
    from modules.host_calls import calls, names

    host = script.webui_host()
    assert host.forge is forge
    [model] = host.list_models()
    manager = host_manager(host)
    try:
        entry = manager.start(tiny_job(tmp_path, model=model, train_iterations=2, logging_save_csv=True))
        assert manager.wait_until_idle(timeout=300)
        done = manager.queue.get(entry.id)
    finally:
        manager.close()
    assert done.status is JobStatus.DONE, done.error
    assert names() == ["acquire", unload, reload, "release"]
    times = dict(calls)
    records = [json.loads(line) for line in Path(done.log).read_text().splitlines()]
    worker_start, worker_end = records[0], records[-1]  # written by the job's process itself
    assert (worker_start["event"], worker_end["event"]) == ("start", "end")
    assert times[unload] < worker_start["time"] and times[reload] > worker_end["time"]  # the lock held all along
    assert (webui / "models" / "Lora" / "job.safetensors").is_file()
    data = webui / "extensions" / "traintrain" / "data"
    assert (data / "queue" / "queue.json").is_file() and list((data / "logs").glob("job_*.csv"))
    assert not (webui / "models" / "Lora" / "logs").exists()


class FailingHost(StandaloneHost):
    def unload_model(self) -> None:
        raise RuntimeError("no model to free")


def test_a_host_that_cannot_free_its_model_gets_its_lock_back(tmp_path):
    """HostJobHooks: the lock goes back if unloading fails, and after a job, also from another thread."""
    import threading

    lock = threading.Lock()
    host = FailingHost(tmp_path)
    host.gpu_lock = lambda: lock  # type: ignore[method-assign]
    hooks = HostJobHooks(host)
    with pytest.raises(RuntimeError):
        hooks.before_job()
    assert not lock.locked()
    host.unload_model = lambda: None  # type: ignore[method-assign]
    hooks.before_job()
    assert lock.locked()
    ended = threading.Thread(target=hooks.after_job)
    ended.start()
    ended.join()
    assert not lock.locked()


RECORDING_LAUNCH = '''
import json, os


def is_installed(package):
    raise AssertionError("install.py reads versions with importlib.metadata")


def run_pip(command, desc=None, live=False):
    with open(os.environ["RUN_PIP_LOG"], "a") as log:
        log.write(json.dumps(command) + "\\n")
'''


def run_installer(python: Path, installer: Path, launch_dir: Path, log: Path) -> list[str]:
    """As the host's `modules/launch_utils.py: run_extension_installer`: `python install.py`, launch importable."""
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(launch_dir), RUN_PIP_LOG=str(log))
    subprocess.run([str(python), str(installer)], env=env, check=True, cwd=launch_dir, timeout=600)
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_install_leaves_a_developers_install_alone_and_installs_a_published_copys_package(tmp_path):
    """launch.py: run_pip(command, desc): TrainTrain goes in with --no-deps; nothing else is asked for here,
    where every requirement is met."""
    launch_dir = tmp_path / "webui"
    launch_dir.mkdir()
    (launch_dir / "launch.py").write_text(RECORDING_LAUNCH)
    assert run_installer(Path(sys.executable), EXTENSION / "install.py", launch_dir, tmp_path / "a.log") == []
    published = tmp_path / "extensions" / "traintrain"
    shutil.copytree(EXTENSION, published, ignore=shutil.ignore_patterns("data"))
    (published / "package").mkdir()
    for part in ("pyproject.toml", "src"):  # what a published copy carries: the package's source
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copyfile
        copy(REPO / part, published / "package" / part)
    commands = run_installer(Path(sys.executable), published / "install.py", launch_dir, tmp_path / "b.log")
    assert commands == [f'install --no-deps "{published / "package"}"']


@pytest.mark.slow
@pytest.mark.parametrize("host", ["forge", "a1111"])
def test_install_keeps_every_package_of_the_hosts_at_its_version(host, tmp_path):
    """install.py under each host's pins (tests/host_envs.py) with a launch.run_pip that really runs pip, in a
    throw-away environment layered over the host's: what was there keeps its version, what TrainTrain
    lacks is added (A1111 has no peft), and a second start asks pip for nothing."""
    from host_envs import overlay_python

    python = overlay_python(host, tmp_path / "env")

    def versions() -> dict[str, str]:
        listing = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True,
                                 text=True, check=True).stdout
        return {item["name"].lower(): item["version"] for item in json.loads(listing)}

    launch_dir = tmp_path / "webui"
    launch_dir.mkdir()
    shutil.copyfile(STANDIN / "launch.py", launch_dir / "launch.py")
    before = versions()
    run_installer(python, EXTENSION / "install.py", launch_dir, tmp_path / "pip.log")
    after = versions()
    assert {name: after.get(name) for name in before} == before
    if host == "a1111":
        assert "peft" in set(after) - set(before)
    (launch_dir / "launch.py").write_text(RECORDING_LAUNCH)
    assert run_installer(python, EXTENSION / "install.py", launch_dir, tmp_path / "again.log") == []
