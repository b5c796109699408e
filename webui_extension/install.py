"""Run by the Web-UI at every start (in its own Python): install TrainTrain without changing the Web-UI's packages.

TrainTrain itself goes in with `--no-deps`; then each of its requirements is checked against what
is installed: a missing one is installed under a constraints file that pins every package already
there (so pip can add, never upgrade), and a host version too old to work is replaced by the
lowest version that works, said in one console line. torch and its companions stay the Web-UI's.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile
from pathlib import Path

import launch

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip carries its own copy
    from pip._vendor.packaging.markers import default_environment  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]

EXTENSION_DIR = Path(__file__).resolve().parent
PACKAGE = "traintrain"
HOST_OWNED = {"torch", "torchvision", "torchaudio", "xformers"}  # the Web-UI's choice for its GPU: never replaced
LOWER_BOUNDS = (">=", "~=", "==", "===")


def package_source() -> Path:
    """This repository's root around the extension folder, or the copy a published extension carries in `package/`."""
    for candidate in (EXTENSION_DIR.parent, EXTENSION_DIR / "package"):
        if (candidate / "pyproject.toml").is_file() and (candidate / "src" / PACKAGE).is_dir():
            return candidate
    raise RuntimeError(f"TrainTrain's source is neither around nor inside {EXTENSION_DIR}")


def source_digest(source: Path) -> str:
    """Changes with any file of the package, so an updated extension reinstalls it."""
    digest = hashlib.sha256()
    files = [source / "pyproject.toml", *sorted((source / "src" / PACKAGE).rglob("*"))]
    for path in files:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(source)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def requirements() -> list[Requirement]:
    """TrainTrain's own requirements (no extras) that apply to this Python."""
    environment = dict(default_environment(), extra="")
    found = [Requirement(text) for text in importlib.metadata.requires(PACKAGE) or []]
    return [req for req in found if req.marker is None or req.marker.evaluate(environment)]


def lowest_working(req: Requirement) -> str:
    """`name==X` for the lowest bound X the requirement names, else the requirement itself."""
    bounds = [spec.version for spec in req.specifier if spec.operator in LOWER_BOUNDS]
    return f"{req.name}=={bounds[0]}" if len(bounds) == 1 else f"{req.name}{req.specifier}"


def pins_except(name: str) -> str:
    """A constraints file holding every installed package at its version, but `name`."""
    skip = canonicalize_name(name)
    lines = sorted({f"{dist.metadata['Name']}=={dist.version}" for dist in importlib.metadata.distributions()
                    if dist.metadata["Name"] and canonicalize_name(dist.metadata["Name"]) not in (skip, PACKAGE)})
    handle = tempfile.NamedTemporaryFile("w", suffix="-pins.txt", delete=False, encoding="utf-8")
    with handle:
        handle.write("\n".join(lines) + "\n")
    return handle.name


def installed_editable_from(source: Path) -> bool:
    """A developer's `pip install -e` of this very source: it is up to date by itself, leave it."""
    try:
        found = json.loads(importlib.metadata.distribution(PACKAGE).read_text("direct_url.json") or "{}")
    except importlib.metadata.PackageNotFoundError:
        return False
    return bool(found.get("dir_info", {}).get("editable")) and found.get("url") == source.resolve().as_uri()


def install_package(source: Path) -> None:
    stamp = EXTENSION_DIR / "data" / "installed.sha256"
    digest = source_digest(source)
    if installed_editable_from(source) or (
            installed_version(PACKAGE) and stamp.is_file() and stamp.read_text().strip() == digest):
        return
    launch.run_pip(f'install --no-deps "{source}"', "TrainTrain")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)


def install_requirements() -> None:
    for req in requirements():
        have = installed_version(req.name)
        if have is not None and req.specifier.contains(have, prereleases=True):
            continue
        if canonicalize_name(req.name) in HOST_OWNED:
            print(f"TrainTrain: this Web-UI's {req.name} {have or '(none)'} does not meet {req}; TrainTrain "
                  f"leaves it to the Web-UI and may not train with it", file=sys.stderr)
            continue
        target = lowest_working(req) if have is not None else str(req).split(";")[0]
        if have is not None:
            print(f"TrainTrain: this Web-UI's {req.name} {have} is too old for TrainTrain ({req}); "
                  f"installing {target}")
        pins = pins_except(req.name)
        try:
            launch.run_pip(f'install "{target}" -c "{pins}"', f"{req.name} for TrainTrain")
        finally:
            os.unlink(pins)


def main() -> None:
    install_package(package_source())
    install_requirements()


if __name__ == "__main__":
    main()
