"""The TrainTrain tab in a Web-UI's page, under each host's pinned Gradio (issue 13), driven in Chromium.

tests/host_probe.py `host-app` serves the extension's tab (`build_host_app`) inside a host's Blocks, Tabs
and TabItem with the host's queue, using the host environment's python (tests/host_envs.py); this test,
in the main environment, opens the tab, trains a tiny LoRA from the shipped preset and watches it
finish. Closing the host's server while the page is still open must return, as A1111's Reload UI needs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open

from host_envs import HOSTS, host_python
from sample_images import write_demo_images
from ui_browser import (
    browser_page,
    choose,
    click_and_read,
    fill_job,
    history_row,
    job_id_in,
    load_preset,
    open_tab,
    require_browser,
)

pytestmark = pytest.mark.slow

PROBE = Path(__file__).resolve().parent / "host_probe.py"


@pytest.fixture(params=HOSTS)
def host_app(request, tmp_path):
    """The host-app probe serving under `tmp_path`: (its first line, the probe process)."""
    require_browser()
    process = subprocess.Popen([str(host_python(request.param)), str(PROBE), "host-app", str(tmp_path)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:  # gradio 3 prints its URL first, whatever `quiet` says
            if line.startswith("{"):
                yield json.loads(line), process
                break
        else:
            pytest.fail(f"the probe ended without serving (exit {process.wait()}); its stderr is above")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_tab_in_the_hosts_page_trains_a_lora_and_the_host_can_close(host_app, tmp_path):
    served, process = host_app
    write_demo_images(tmp_path / "images")
    with browser_page(tmp_path / "shots", f"host-gradio-{served['gradio']}") as page:
        page.goto(f"http://127.0.0.1:{served['port']}/")
        open_tab(page, "TrainTrain")
        page.locator("#tt-start").wait_for()
        load_preset(page, "LoRA")
        fill_job(page, model=served["model"], data=str(tmp_path / "images"), name="in_host", iterations=2)
        choose(page, "tt-model", served["model"])  # the host's checkpoint list offers it
        job = job_id_in(click_and_read(page, "Start Training", expect="started"))
        history_row(page, job, "done")
        process.stdin.close()  # the host closes its server (Reload UI, Ctrl-C) with the page still open
        assert process.wait(timeout=30) == 0
    assert json.loads(process.stdout.read().strip().splitlines()[-1]) == {"closed": True}
    lora = tmp_path / "Lora" / "in_host.safetensors"  # the host's LoRA folder, not the data folder
    with safe_open(str(lora), "pt") as saved:
        assert any(key.startswith("lora_unet_") for key in saved.keys())
