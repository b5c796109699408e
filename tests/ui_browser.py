"""Driving the web UI in Debian's Chromium with Playwright: start the app, fill the form, read the page.

Screenshots of failing tests are kept under the test's own tmp folder (see `browser_page`).
"""

from __future__ import annotations

import json
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
TINY_SETTINGS = {  # small enough to train in seconds on 2 CPU cores
    "image_size": "64,64", "image_buckets_step": "64", "image_min_length": "64", "train_batch_size": "1",
    "network_rank": "2", "network_alpha": "2",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 120) -> None:
    """An app started in another process answers once its server is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def require_browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api")


@contextmanager
def browser_page(shots: Path, name: str):
    """A fresh page; on an exception a full-page screenshot is written to `shots/name.png` first."""
    playwright_api = require_browser()
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            yield page
        except BaseException:
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
            raise
        finally:
            browser.close()


def open_app(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("button", name="Start Training").wait_for()
    page.wait_for_timeout(500)  # the page's load events (field visibility, first poll)


def open_tab(page, name: str) -> None:
    """Click the tab of exactly this name ("Train" is not a host's "TrainTrain"): a role="tab" button on
    gradio 4 and 6, a plain button of the tab bar on gradio 3."""
    tab = page.get_by_role("tab", name=name, exact=True)
    tab.or_(page.locator(".tab-nav > button").get_by_text(name, exact=True)).first.click()


def element(page, element_id: str):
    """The component of this elem_id (gradio 3 repeats a Markdown's id on its inner text: the outer one)."""
    return page.locator(f"#{element_id}").first


def field(page, element_id: str):
    """The input of a Gradio component (textbox, number, dropdown) by its elem_id."""
    return page.locator(f"#{element_id}").locator("input, textarea").first


def set_field(page, name: str, value: str) -> None:
    box = field(page, "tt-" + name.replace("_", "-"))
    if not box.is_visible() and page.locator("#tt-group-optional").is_visible():
        page.locator("#tt-group-optional").get_by_text("Optional parameters").first.click()  # open its accordion
    box.fill(str(value))
    box.press("Tab")


def choose(page, element_id: str, value: str) -> None:
    """Pick a dropdown option (or type a free value where the dropdown takes one)."""
    box = field(page, element_id)
    box.click()
    box.fill(value)
    option = page.get_by_role("option", name=value, exact=True)  # gradio 4 and 6; a plain list item on gradio 3
    option.or_(page.locator(f'[data-testid="dropdown-option"][data-value={json.dumps(value)}]')).first.click()


def type_free_value(page, element_id: str, value: str) -> None:
    box = field(page, element_id)
    box.fill(value)
    box.press("Enter")
    box.press("Tab")


def load_preset(page, name: str) -> None:
    choose(page, "tt-preset", name)
    page.get_by_role("button", name="Load preset").click()
    page.locator("#tt-preset-status").get_by_text(f"Loaded preset {name}").wait_for()


def fill_job(page, *, model: str, data: str, name: str, iterations: int, **extra) -> None:
    type_free_value(page, "tt-model", model)
    for key, value in {"lora_data_directory": data, "save_lora_name": name, "train_iterations": iterations,
                       **TINY_SETTINGS, **extra}.items():
        set_field(page, key, value)


def click_and_read(page, button: str, status_id: str = "tt-status", expect: str = "") -> str:
    """Click a button and return the status line it writes (waiting for `expect` in it)."""
    status = element(page, status_id)
    before = status.inner_text()
    page.get_by_role("button", name=button, exact=True).click()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = status.inner_text()
        if text != before and text.strip() and expect in text:
            return text
        page.wait_for_timeout(100)
    raise AssertionError(f"{status_id} did not show {expect!r} after {button!r}: {status.inner_text()!r}")


def job_id_in(text: str) -> str:
    match = re.search(r"Job (\w+)", text)
    assert match, text
    return match.group(1)


def wait_for_text(page, element_id: str, pattern: str, timeout: float = 180) -> str:
    """Wait until the element's text matches the regular expression (the page polls every second)."""
    locator = element(page, element_id)
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = locator.inner_text()
        if re.search(pattern, text):
            return text
        page.wait_for_timeout(250)
    raise AssertionError(f"#{element_id} never matched {pattern!r}; it shows {text[:500]!r}")


def history_row(page, job_id: str, status: str, timeout: float = 180) -> None:
    """Wait until the job's own row of the History table shows the status (another row's is not it).

    The table's text is its cells one per line (gradio 6) or tab-separated: id, name, mode, status.
    """
    open_tab(page, "History")
    cell = r"[\t\n]+[^\t\n]*"
    row = rf"{job_id}{cell}{cell}[\t\n]+({status}|failed|cancelled)\b"  # a job that ended otherwise: at once
    text = wait_for_text(page, "tt-history", row, timeout)
    shown = re.search(row, text).group(1)  # type: ignore[union-attr]
    assert shown == status, f"job {job_id} ended {shown}, not {status}: {text[:1000]!r}"
    open_tab(page, "Train")


def line_colours(page, element_id: str, timeout: float = 30) -> list[str]:
    """The stroke colours of a LinePlot's drawn lines, once it has some (a line without one is invisible)."""
    lines = page.locator(f'#{element_id} path[aria-roledescription="line mark"]')
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and lines.count() == 0:
        page.wait_for_timeout(250)
    return [lines.nth(i).get_attribute("stroke") or "" for i in range(lines.count())]
