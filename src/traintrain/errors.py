"""The errors the core raises for a face to show: bad input, a diverged run, a requested stop.

Errors are data, not sentences for one face: a `UserError` names the setting it concerns, the
problem and the fix in words that name no face. The CLI renders the setting as its flag, the UI
marks the form field; both show the same problem and fix.
"""

from __future__ import annotations

from pathlib import Path

# Settings of a job that are not config fields but inputs a face passes to `run_job`.
OUTPUT_DIR = "output_dir"
TOKENIZER_DIR = "tokenizer_dir"
RESUME_STATE = "resume_state"


class UserError(Exception):
    """Bad input the user can fix.

    `field` is a config field name (or one of the job inputs above), or None when no single
    setting is at fault; `problem` says what is wrong and `fix` what to do, without naming a face.
    """

    def __init__(self, problem: str, fix: str = "", *, field: str | None = None):
        self.problem, self.fix, self.field = problem, fix, field
        super().__init__(f"{field}: {self.message}" if field else self.message)

    @property
    def message(self) -> str:
        """Problem and fix in one line, as a face shows them next to the field it names."""
        return f"{self.problem}; {self.fix}" if self.fix else self.problem


class NonFiniteLoss(Exception):
    """Training diverged; the message names the step, the likely cause and what was kept."""


class TrainingStopped(Exception):
    """A stop was requested: the run saved its network and a state at `step`, then ended.

    A face tells the user how to continue from `state` in its own terms.
    """

    def __init__(self, phase: str, step: int, total: int, saved: Path | None, state: Path | None):
        self.phase, self.step, self.total, self.saved, self.state = phase, step, total, saved, state
        where = f"saved {saved} and the resumable state {state}" if state else "nothing saved"
        super().__init__(f"stopped at {phase} step {step} of {total}: {where}")
