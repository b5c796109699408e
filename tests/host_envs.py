"""Virtual environments holding the Web-UIs' pinned libraries, built once under .host-envs/ (git-ignored).

Each host's pins are in host_pins/<host>.txt; torch is this machine's, and TrainTrain itself goes in
without dependencies, so nothing but the pins decides the versions it runs on. The tests of the
package and of the extension share these environments through `host_python`.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENVS = ROOT / ".host-envs"
PINS = Path(__file__).resolve().parent / "host_pins"
HOSTS = ("forge", "a1111")
TORCH = "torch==2.13.0"  # the local wheel; never an unpinned torch
# TrainTrain's other needs that the hosts do not pin: pip picks versions that fit the pins.
OTHER_NEEDS = ("tqdm", "matplotlib", "pandas")


def host_python(name: str) -> Path:
    """The python of host environment `name`, built first when missing or when its recipe changed.

    A file lock makes a second pytest process wait for the first one's build instead of doing it again.
    """
    folder = ENVS / name
    stamp = folder / ".built"
    ENVS.mkdir(exist_ok=True)
    with open(ENVS / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.is_file() or stamp.read_text() != recipe_digest(name):
            _build(folder, PINS / f"{name}.txt")
            stamp.write_text(recipe_digest(name))
        package_stamp = folder / ".package"
        if not package_stamp.is_file() or package_stamp.read_text() != package_digest():
            # The editable install's metadata (its requirements) is read from pyproject.toml when installed.
            _run([str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(ROOT)])
            package_stamp.write_text(package_digest())
    return folder / "bin" / "python"


def overlay_python(name: str, folder: Path) -> Path:
    """A throw-away environment layered over host environment `name`: it sees every package there,
    and what pip installs goes into `folder`, so a test may install without changing the shared one."""
    base = host_python(name)
    _run([sys.executable, "-m", "venv", "--without-pip", str(folder)])
    python = folder / "bin" / "python"
    find = ["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    host_site, own_site = (subprocess.run([str(p), *find], capture_output=True, text=True, check=True).stdout.strip()
                           for p in (base, python))
    # addsitedir also reads the host's own .pth files (TrainTrain's editable install is one).
    Path(own_site, "host-env.pth").write_text(f"import site; site.addsitedir({host_site!r})\n")
    return python


def package_digest() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def pins(name: str) -> dict[str, str]:
    """The host's pinned versions by lower-case package name."""
    lines = (line.split("#")[0].strip() for line in (PINS / f"{name}.txt").read_text().splitlines())
    return {package.lower(): version for package, _, version in (line.partition("==") for line in lines if line)}


def recipe_digest(name: str) -> str:
    recipe = "\n".join([(PINS / f"{name}.txt").read_text(), TORCH, *OTHER_NEEDS])
    return hashlib.sha256(recipe.encode()).hexdigest()


def _build(folder: Path, pin_file: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(folder)])
    pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    _run([*pip, TORCH])
    _run([*pip, "-r", str(pin_file), *OTHER_NEEDS])
    _run([*pip, "--no-deps", "-e", str(ROOT)])


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
