"""Run inside a host environment by the host tests: `python host_probe.py versions|train|serve|host-app FOLDER`.

Prints one JSON object on its last line, for the test to read back (`host-app` one on its first line too).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import urllib.request
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def versions(_: Path) -> dict:
    import traintrain.cli  # noqa: F401  # the package and its command line import under the pins

    names = ("gradio", "diffusers", "transformers", "accelerate", "pillow", "numpy", "safetensors", "peft",
             "huggingface-hub", "pydantic", "fastapi")
    return {name: _version(name) for name in names}


def train(folder: Path) -> dict:
    from job_helpers import tiny_job
    from traintrain.jobs.runner import run_job

    result = run_job(tiny_job(folder, train_iterations=2), output_dir=folder / "output")
    return {"lora": str(result.path), "steps": len(result.losses)}


def serve(folder: Path) -> dict:
    """The app rendered in a host's Blocks as the Web-UIs do it: a TabItem per extension, their queue."""
    import gradio as gr

    from traintrain.jobs.manager import JobManager
    from traintrain.ui import compat
    from traintrain.ui.app import build_app

    manager = JobManager(folder)
    try:
        tab = build_app(manager, output_dir=folder)
        with gr.Blocks() as host:
            with gr.TabItem("TrainTrain", id="traintrain"):
                tab.render()
        host.queue()
        port = _free_port()
        host.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30)
            config = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30))
        finally:
            host.close()
    finally:
        manager.close()
    components = config["components"]
    return {
        "status": page.status,
        "elem_ids": [c.get("props", {}).get("elem_id") for c in components],
        "polls": any(c.get("type") == "timer" for c in components)
        or any(compat.POLL_BUTTON in (d.get("js") or "") for d in config["dependencies"]),
    }


@dataclass
class ProbeHost:
    """A Web-UI as the extension sees one: its checkpoints folder, its LoRA folder apart from the data folder,
    a GPU lock (the hooks hold it for the job)."""

    folder: Path
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def lora_dir(self) -> Path:
        return self.folder / "Lora"

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    def list_models(self) -> list[str]:
        from traintrain.models.discovery import list_models

        return list_models(self.folder / "models")

    def list_vaes(self) -> list[str]:
        from traintrain.models.discovery import list_vaes

        return list_vaes(self.folder / "models")

    def gpu_lock(self) -> AbstractContextManager:
        return self.lock

    def unload_model(self) -> None:
        pass

    def reload_model(self) -> None:
        pass


def host_app(folder: Path) -> dict:
    """The extension's tab (`build_host_app`) in a host's Blocks, with a tab before it and the host's queue
    (both Web-UIs call `queue(64)`), served until stdin closes; its port and checkpoint go out on one line first.

    The tiny checkpoint is written here, by the host's own libraries, as the host's models would be: one
    written by newer ones has a tokenizer.json that the tokenizers of A1111's transformers 4.30 cannot read.
    """
    import gradio as gr

    from traintrain.models.tiny import write_tiny_model
    from traintrain.ui import compat
    from traintrain.ui.host import build_host_app, host_manager

    host = ProbeHost(folder)
    model = host.folder / "models" / "tiny.safetensors"
    write_tiny_model("sd1", "single-file", model)
    try:
        tab = build_host_app(host)
        with gr.Blocks(analytics_enabled=False, title="Stable Diffusion") as webui:
            with gr.Tabs(elem_id="tabs"):
                with gr.TabItem("txt2img", id="txt2img", elem_id="tab_txt2img"):
                    gr.Textbox(label="Prompt", elem_id="txt2img_prompt")
                with gr.TabItem("TrainTrain", id="traintrain", elem_id="tab_traintrain"):
                    tab.render()
        compat.enable_queue(webui, 64)
        port = _free_port()
        webui.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        print(json.dumps({"port": port, "model": str(model), "gradio": gr.__version__}), flush=True)
        sys.stdin.read()
        webui.close()
    finally:
        host_manager(host).close()
    return {"closed": True}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    probe = {"versions": versions, "train": train, "serve": serve, "host-app": host_app}[sys.argv[1]]
    print(json.dumps(probe(Path(sys.argv[2]))))
