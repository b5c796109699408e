"""Crash-safe files: a process killed at any moment never leaves a truncated file under a final name.

Whole files are written to a temporary `.NAME.*.tmp` in the same folder, fsynced and renamed over
the final name (a rename within one folder is atomic), so readers see the old file or the new one,
never a mix. Logs that grow line by line are appended one complete line per write call.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from traintrain.errors import UserError

TEMP_SUFFIX = ".tmp"


def check_plain_name(name: str, what: str) -> str:
    """A user-chosen name becomes a file name, never a path: nothing is written outside its folder."""
    if not name or any(sep in name for sep in ("/", "\\")) or ".." in name or "\0" in name:
        raise UserError(f"{what}: '{name}' must be a plain name without '/', '\\' or '..'")
    return name


def _temp_prefix(final: Path) -> str:
    return f".{final.name}."


@contextmanager
def atomic_path(final: Path):
    """Yield a temporary path in the same folder; on success fsync it and rename it to `final`.

    On any error the temporary file is removed and `final` (and any previous file there) is untouched.
    The new file gets the usual permissions (0666 less the umask), not mkstemp's private 0600.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(final), suffix=TEMP_SUFFIX, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync_file(tmp)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_folder(final: Path):
    """Yield a temporary folder beside `final`; on success fsync its files and rename it to `final`.

    A folder rename cannot replace an existing folder, so `final` must not exist (callers check).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=TEMP_SUFFIX, dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        for folder, _, files in os.walk(tmp):
            for name in files:
                _fsync_file(Path(folder, name))
            _fsync_dir(Path(folder))
        os.rename(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(final: Path, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove_stale_temps(final: Path) -> list[Path]:
    """Delete temporary files a killed writer of `final` left behind; only this job writes that name."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    stale = [p for p in final.parent.glob(f"{_temp_prefix(final)}*{TEMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class LineAppender:
    """An append-only text file written one whole line per `os.write`.

    A killed process leaves only complete lines: a line is either in the kernel (it survives the
    process) or it was never handed over. `sync()` also forces it to disk against power loss.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path}: the file is closed")
        return self._fd

    def write_line(self, line: str) -> None:
        data = (line.rstrip("\n") + "\n").encode("utf-8")
        written = os.write(self._open_fd(), data)
        if written != len(data):  # a short write only happens when the disk is full
            raise OSError(28, "short write (disk full?)", str(self.path))

    def sync(self) -> None:
        os.fsync(self._open_fd())

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
