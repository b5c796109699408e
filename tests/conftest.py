"""Test-session settings: with `pytest -n 2` (the Makefile's), each worker uses one CPU thread.

Two workers on two cores then run side by side without fighting over threads, and subprocesses the
tests start (job workers, the CLI) inherit the same setting, so bit-identical comparisons between a
run here and one in a subprocess use the same thread count.
"""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
