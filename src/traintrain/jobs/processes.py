"""Is a recorded worker still alive? A pid alone can be reused, so it is paired with its start time.

On Linux the start time (field 22 of `/proc/PID/stat`, clock ticks since boot) tells a reused pid
from the process that was recorded; elsewhere only the pid is checked.
"""

from __future__ import annotations

import os
from pathlib import Path


def process_token(pid: int) -> str | None:
    """The process's start time, or None when it is gone (or the platform has no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state_and_rest = stat.rsplit(")", 1)[1].split()  # the command name in (...) may hold spaces
    if state_and_rest[0] in ("Z", "X"):  # a zombie has ended; only its exit status is left
        return None
    return state_and_rest[19]


def process_alive(pid: int | None, token: str | None) -> bool:
    """True while the process recorded as `pid` with start time `token` runs."""
    if not pid:
        return False
    if Path("/proc/self/stat").exists():
        current = process_token(pid)
        return current is not None and (token is None or current == token)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
