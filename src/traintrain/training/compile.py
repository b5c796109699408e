"""The opt-in fast path (train_compile): the denoiser, with the adapters hooked into its layers, compiled
by torch.compile (inductor) for the training steps.

- The denoiser's `forward` is replaced on the instance, as the adapters hook their layers, instead of
  wrapping the model in torch.compile's OptimizedModule: the model object and every state-dict key
  (no `_orig_mod.` prefix) stay those of eager training, so saved files and resumable states are the same.
- Only the loss computations of the training loop (`compiled_calls()`) run the compiled forward;
  previews, the estimate and a mode's set-up passes call it eagerly, so an eval-mode, no-grad,
  classifier-free-guidance batch never costs a compile.
- The adapters' multiplier is a tensor under compile (networks/base.py), so a multiplier change
  (ADDifT's reverse steps) reuses the graph. Switching the adapter off (iLECO's and ADDifT's target
  passes, without gradients) and Difference's second pass each compile once.
- Shapes are static: each bucket's latent size (and a bucket's smaller last batch) compiles once. torch
  2.13's inductor fails on this UNet with dynamic sizes ("cannot determine truth value of Relational"
  in its stride ordering), which would end compiling at the second bucket. After
  torch._dynamo.config.recompile_limit (8) graphs, further shapes run eagerly (torch warns).
- On the CPU inductor's layout optimization is off: it turns the convolutions channels-last and, the
  frozen weights being inputs of a training graph rather than constants, copies every conv weight at
  every step. On SD1.5 (64 px, 1 thread) that made the compiled trainer 1.66x the eager floor, its peak
  1.76x (benchmarks/run.py); without it 0.95x and 1.17x.
  On a GPU inductor's default stays (channels-last suits cuDNN; not measured here: no GPU was lent).
- Where compiling cannot work (no TorchDynamo on this Python, no C++ compiler for the CPU, no triton
  for the GPU) or fails at the first call, training runs eagerly after one warning.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
from torch import nn

from traintrain.training.events import Message, Reporter

_COMPILED_CALLS = contextvars.ContextVar("compiled_calls", default=False)
BACKEND = "inductor"  # the tests count recompiles with "aot_eager": guards are dynamo's, whatever the backend


@contextlib.contextmanager
def compiled_calls() -> Iterator[None]:
    """Inside, a compiled denoiser runs its compiled forward; everywhere else its eager one."""
    token = _COMPILED_CALLS.set(True)
    try:
        yield
    finally:
        _COMPILED_CALLS.reset(token)


class CompiledForward:
    """A module's forward that runs compiled inside `compiled_calls()` and eagerly elsewhere; after a
    compile error it warns once and stays eager."""

    def __init__(self, eager: Callable, report: Reporter, device: torch.device):
        self.eager = eager
        options = inductor_options(device) if BACKEND == "inductor" else None  # other backends take none
        self.compiled: Callable | None = torch.compile(eager, backend=BACKEND, dynamic=False, options=options)
        self.report = report

    def __call__(self, *args, **kwargs):
        if self.compiled is None or not _COMPILED_CALLS.get():
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as error:  # the base of compile and backend failures
            self.compiled = None
            self.report(Message(f"train_compile: compiling the denoiser failed ({_cause(error)}); training eagerly",
                                "warning"))
            return self.eager(*args, **kwargs)


def inductor_options(device: torch.device) -> dict:
    """Inductor settings for training this device's denoiser (the module docstring says why)."""
    return {"layout_optimization": False} if device.type == "cpu" else {}


def _cause(error: Exception) -> str:
    """The first line of what went wrong: the backend's own error, not dynamo's wrapper around it."""
    cause = getattr(error, "inner_exception", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot run on this device here, or None."""
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support this Python / torch ({torch.__version__})"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "triton is not installed (on Windows: pip install triton-windows)"
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as error:  # noqa: BLE001  # inductor says why in its own words (no compiler, a bad CXX)
        return f"no C++ compiler for inductor on the CPU ({error})"
    return None


def compile_denoiser(denoiser: nn.Module, device: torch.device, report: Reporter) -> bool:
    """Hook a compiled forward into the denoiser; False (after one warning) where it cannot be compiled."""
    reason = compile_unavailable(device)
    if reason is not None:
        report(Message(f"train_compile: {reason}; training eagerly", "warning"))
        return False
    # The hook: an instance attribute shadowing the class's forward, as the adapters hook their layers.
    denoiser.forward = CompiledForward(denoiser.forward, report, device)
    report(Message("train_compile: the denoiser compiles at the first steps (slower), then runs compiled"))
    return True
