"""Run inside a host environment by test_host_pins: `python host_probe.py versions|train|serve FOLDER`.

Prints one JSON object on its last line, for the test to read back.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request
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
        or any(d.get("every") for d in config["dependencies"]),
    }


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
    probe = {"versions": versions, "train": train, "serve": serve}[sys.argv[1]]
    print(json.dumps(probe(Path(sys.argv[2]))))
