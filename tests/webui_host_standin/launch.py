"""launch.py / modules/launch_utils.py: run_pip(command, desc=None, live=...) and is_installed(package)."""

import importlib.metadata
import importlib.util
import subprocess
import sys


def is_installed(package):
    try:
        return importlib.metadata.version(package) is not None
    except importlib.metadata.PackageNotFoundError:
        return importlib.util.find_spec(package) is not None


def run_pip(command, desc=None, live=False):
    print(f"Installing {desc}")
    result = subprocess.run(f'"{sys.executable}" -m pip {command} --prefer-binary', shell=True,
                            capture_output=not live, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"Couldn't install {desc}: {result.stdout}{result.stderr}")
    return result.stdout
