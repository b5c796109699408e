"""Resumable states: what a run needs to continue bit for bit, written beside its periodic saves.

`{name}_{k}steps.state` (torch.save of tensors and plain values, read back with weights_only) holds
the job (settings, output folder, seed), the phase and step, the trained parameters, the optimizer
and lr-schedule states, the random states (torch's global one, the run's generator, the data order)
and the parameters of phases already finished (Difference's copier). A resumed run rebuilds
everything from the same seed as the first run did, so its latents and caches come out identical;
each phase's loop then restores its own part before its first step, and a finished phase is skipped.
Only the newest state of a run is kept, and a run that completes removes its own: they exist to
survive interruptions, and each is about three times the size of the LoRA.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import torch

from traintrain.errors import RESUME_STATE, UserError
from traintrain.fileio import atomic_path

STATE_SUFFIX = ".state"
FORMAT = 1


class SeededRandom(random.Random):
    """A data-order random source whose position a state can hold."""

    def get_state(self):
        return self.getstate()

    def set_state(self, state) -> None:
        self.setstate(state)


def state_path_for(lora_path: Path) -> Path:
    return Path(lora_path).with_suffix(STATE_SUFFIX)


def load_state(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found", f"give a {{name}}_{{step}}steps{STATE_SUFFIX} file of a stopped run",
                        field=RESUME_STATE)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means "not one of our states"
        raise UserError(f"{path} is not a TrainTrain state file ({type(exc).__name__})", field=RESUME_STATE) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a TrainTrain state file of this version", field=RESUME_STATE)
    return state


class Checkpoints:
    """One job's resumable states and its stop request, shared by the loops of all its phases."""

    def __init__(self, job: dict, generator: torch.Generator, resumed: dict | None = None,
                 stop_requested: threading.Event | None = None, writes: bool = True):
        self.job = job  # settings JSON, output_dir, tokenizer_dir, seed, started_at
        self.generator = generator
        self.resumed = resumed
        self.stop_requested = stop_requested or threading.Event()  # set from any thread (signal, UI button)
        self.finished: dict[str, dict] = {}  # phase -> {"params", "progress"} of phases done
        self.written: list[Path] = []
        self.writes = writes  # False in the other processes of a data-parallel run

    def save(self, lora_path: Path, phase: str, progress: dict, params, training, data_order, *,
             final: bool = False) -> Path:
        """Write the state beside `lora_path` (called in training mode, after the step's saves).

        A `final` state (save_state: the finished run's) is kept when the run completes; the run
        can be continued from it to more steps.
        """
        path = state_path_for(lora_path)
        if not self.writes:
            return path
        state = {
            "format": FORMAT, "job": self.job, "phase": phase, "progress": progress, "final": final,
            "params": [p.detach().cpu().clone() for p in params],
            "optimizer": training.optimizer.state_dict(),
            "scheduler": training.scheduler.state_dict(),
            "data_order": data_order.get_state() if data_order is not None else None,
            "rng": {
                "torch": torch.get_rng_state(), "generator": self.generator.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "finished": self.finished,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        for old in self.written:
            if old != path:
                old.unlink(missing_ok=True)
        self.written = [] if final else [path]
        return path

    def restore(self, phase: str, params, training, data_order) -> dict | None:
        """Put a resumed phase back where the state left it; returns its progress (None = start afresh)."""
        state = self.resumed
        if state is None:
            return None
        if phase != state["phase"]:
            if phase not in state["finished"]:
                return None
            done = state["finished"][phase]  # an earlier phase (Difference's copier): not trained again
            _copy_params(params, done["params"], phase)
            return dict(done["progress"], finished=True)
        _copy_params(params, state["params"], phase)
        training.optimizer.load_state_dict(state["optimizer"])
        training.scheduler.load_state_dict(state["scheduler"])
        if data_order is not None:
            data_order.set_state(state["data_order"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["generator"])
        if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return dict(state["progress"])

    def phase_finished(self, phase: str, params, progress: dict) -> None:
        """Later states carry this phase's final weights, so resuming a later phase can skip it."""
        self.finished[phase] = {"params": [p.detach().cpu().clone() for p in params], "progress": progress}

    def discard_written(self) -> None:
        """The run completed: its states are no longer needed."""
        for path in self.written:
            path.unlink(missing_ok=True)
        self.written = []


def _copy_params(params, saved, phase: str) -> None:
    if len(params) != len(saved) or any(p.shape != s.shape for p, s in zip(params, saved, strict=False)):
        raise UserError(f"the state's {phase} network does not match this run's", "resume with the same model",
                        field=RESUME_STATE)
    with torch.no_grad():
        for param, value in zip(params, saved, strict=False):
            param.copy_(value)
