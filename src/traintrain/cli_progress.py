"""Renders core events on a terminal: a tqdm bar with step, loss, lr and ETA; messages above it."""

from __future__ import annotations

import sys

from tqdm import tqdm

from traintrain.training.events import Message, Progress, Saved, Written


class ProgressPrinter:
    def __init__(self, verbose: bool = False, stream=None):
        self.verbose = verbose
        self.stream = stream or sys.stderr  # looked up now: sys.stderr may have been replaced since import
        self.bar = None
        self.phase = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close_bar()
        return False

    def _close_bar(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __call__(self, event):
        if isinstance(event, Progress):
            if self.bar is None or self.phase != event.phase:
                self._close_bar()
                self.phase = event.phase
                self.bar = tqdm(total=event.total, desc=event.phase, unit="step", file=self.stream, dynamic_ncols=True)
            self.bar.set_postfix(loss=f"{event.loss_average:.4f}", lr=f"{event.learning_rate:.2e}", refresh=False)
            self.bar.update(event.step - self.bar.n)
            if self.verbose:
                self.bar.write(
                    f"step {event.step}/{event.total} loss {event.loss:.5f} lr {event.learning_rate:.3e}",
                    file=self.stream,
                )
        elif isinstance(event, Message):
            text = event.text if event.level == "info" else f"{event.level}: {event.text}"
            tqdm.write(text, file=self.stream)
        elif isinstance(event, Saved):
            tqdm.write(f"saved {event.path} (step {event.step})", file=self.stream)
        elif isinstance(event, Written):
            tqdm.write(f"{event.kind}: {event.path}", file=self.stream)
