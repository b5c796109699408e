"""TrainTrain under the Web-UIs' pinned libraries (issue 13): Forge (gradio 4.40, diffusers 0.31,
transformers 4.46, Pillow 9.5, ...) and A1111 1.10 (gradio 3.41, transformers 4.30, Pillow 9.5, plus
the diffusers 0.31 the original extension installs there).

Each test runs tests/host_probe.py with the host environment's python (built once by host_envs).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open

from host_envs import HOSTS, host_python, pins

pytestmark = pytest.mark.slow

PROBE = Path(__file__).resolve().parent / "host_probe.py"


@pytest.fixture(scope="module", params=HOSTS)
def host(request) -> str:
    host_python(request.param)
    return request.param


def probe(host: str, action: str, folder: Path) -> dict:
    done = subprocess.run([str(host_python(host)), str(PROBE), action, str(folder)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_package_imports_with_exactly_the_hosts_pins(host, tmp_path):
    found = probe(host, "versions", tmp_path)
    assert {name: found.get(name) for name in pins(host) if name in found} == {
        name: version for name, version in pins(host).items() if name in found
    }


def test_run_job_trains_the_tiny_model_and_saves(host, tmp_path):
    result = probe(host, "train", tmp_path)
    assert result["steps"] == 2
    with safe_open(result["lora"], "pt") as saved:
        assert any(key.startswith("lora_unet_") for key in saved.keys())


def test_the_app_renders_in_a_host_tab_and_the_page_is_served(host, tmp_path):
    served = probe(host, "serve", tmp_path)
    assert served["status"] == 200
    assert {"tt-start", "tt-stop", "tt-model", "tt-queue", "tt-loss-plot"} <= set(served["elem_ids"])
    assert served["polls"], "the live progress must poll (a Timer, or on gradio 3 the page's poll button)"
