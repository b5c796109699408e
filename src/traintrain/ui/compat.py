"""The few Gradio calls that differ between the versions the app runs under: one UI for all.

Standalone installs get a current Gradio (6.x); the Web-UIs pin their own: A1111 1.10 has 3.41,
Forge 4.40. Everything else the app uses is the same in all three, so only these go through here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

GRADIO_MAJOR = int(gr.__version__.split(".")[0])

# Keys a 3.x `update` refuses: each component's own update() there takes a fixed list of arguments.
_UPDATE_KEYS_AFTER_3 = ("elem_classes",)
POLL_BUTTON = "tt-poll"  # the hidden button of `poll` on 3.x


def poll(app: gr.Blocks, seconds: float, fn: Callable, inputs: Any, outputs: Any) -> None:
    """Call `fn` every `seconds` while a page is open (call it inside `app`'s Blocks): a Timer where Gradio
    has one (4.40 and 6.x do), else a hidden button that the page clicks on a timer.

    Not 3.x's `every=`: for each page that goes away it leaves a request waiting forever, and closing the
    server (A1111's Reload UI does) then waits for those forever too.
    """
    timer = getattr(gr, "Timer", None)
    if timer is not None:
        timer(seconds).tick(fn, inputs, outputs, show_progress="hidden")
        return
    tick = gr.Button(visible=False, elem_id=POLL_BUTTON)
    tick.click(fn, inputs, outputs, show_progress="hidden")
    # The page may sit in a shadow root (gradio-app) or in the document itself.
    clicks = f"""() => {{ setInterval(() => {{
        const root = document.querySelector("gradio-app")?.shadowRoot ?? document;
        root.getElementById("{POLL_BUTTON}")?.click(); }}, {round(seconds * 1000)}); }}"""
    app.load(None, None, None, _js=clicks)  # type: ignore[call-arg]  # 3.x's name (4 and later: js)


def update(**changes: Any) -> Any:
    """`gr.update`, without the keys this Gradio cannot change after rendering (the rest still apply)."""
    if GRADIO_MAJOR < 4:
        changes = {key: value for key, value in changes.items() if key not in _UPDATE_KEYS_AFTER_3}
    return gr.update(**changes)


def enable_queue(app: gr.Blocks, concurrency: int) -> None:
    """Turn on the queue with `concurrency` events at once (3.x names it concurrency_count)."""
    if GRADIO_MAJOR < 4:
        app.queue(concurrency_count=concurrency)
    else:
        app.queue(default_concurrency_limit=concurrency)
