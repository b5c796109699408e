"""Test-session settings for `pytest -n auto --dist loadfile` (the Makefile's).

Each worker uses one CPU thread: two workers on two cores run side by side without fighting over
threads, and subprocesses the tests start (job workers, the CLI) inherit the same setting, so
bit-identical comparisons between a run here and one in a subprocess use the same thread count.

The longest files run first: workers take files in collection order, and a long file taken last
leaves the other workers idle until it ends.
"""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


# The files that take minutes (toy-world training, job workers, browsers, host environments), longest first as
# measured (`--durations`); test_host_pins.py second, as on a clean clone its fixture first builds the hosts' envs.
LONGEST_FIRST = ("test_toyworld_effects.py", "test_host_pins.py", "test_ui_app.py", "test_distributed.py",
                 "test_manager.py", "test_compile.py", "test_ileco.py", "test_atomic_kill.py", "test_toyworld_model.py",
                 "test_difference.py", "test_benchmarks.py", "test_demo.py", "test_host_browser.py",
                 "test_webui_extension.py", "test_training.py", "test_estimate.py", "test_resume.py",
                 "test_original_options.py", "test_prediction.py", "test_bad_inputs.py", "test_interrupt.py",
                 "test_nan_guard.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file and among the others stays
