"""The one interface between the app and whatever hosts it: standalone, or a Web-UI's tab.

A host says which checkpoints and VAEs the pickers list, where the LoRA files go, where the app keeps
its presets, queue and logs, and how to share the GPU: a lock held for a whole job and the host's
own model freed before it and loaded again after. The Web-UI extension
(`webui_extension/scripts/traintrain_tab.py`) implements it over the Web-UI's functions; the app
itself knows nothing of any host.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from traintrain.jobs.manager import JobManager
from traintrain.models.discovery import list_models, list_vaes


class Host(Protocol):
    @property
    def lora_dir(self) -> Path: ...  # the LoRA files

    @property
    def data_dir(self) -> Path: ...  # presets, the queue, logs, uploads

    def list_models(self) -> list[str]: ...

    def list_vaes(self) -> list[str]: ...

    def gpu_lock(self) -> AbstractContextManager: ...

    def unload_model(self) -> None: ...

    def reload_model(self) -> None: ...


@dataclass
class StandaloneHost:
    """`traintrain ui`: the models folder's checkpoints and VAEs, everything in the output folder, no GPU sharing."""

    output_dir: Path
    models_dir: Path | None = None

    @property
    def lora_dir(self) -> Path:
        return Path(self.output_dir)

    @property
    def data_dir(self) -> Path:
        return Path(self.output_dir)

    def list_models(self) -> list[str]:
        return list_models(self.models_dir)

    def list_vaes(self) -> list[str]:
        return list_vaes(self.models_dir)

    def gpu_lock(self) -> AbstractContextManager:
        return nullcontext()

    def unload_model(self) -> None:
        pass

    def reload_model(self) -> None:
        pass


class HostJobHooks:
    """A job's process runs while the host's lock is held and its model is out of the GPU.

    The lock is taken and released by a thread of its own, because the manager starts and ends
    jobs from different threads and a host's lock may have to be released by its owner.
    """

    def __init__(self, host: Host):
        self.host = host
        self._release: threading.Event | None = None
        self._holder: threading.Thread | None = None

    def before_job(self) -> None:
        acquired, release = threading.Event(), threading.Event()
        failure: list[BaseException] = []

        def hold() -> None:
            try:
                with self.host.gpu_lock():
                    acquired.set()
                    release.wait()
            except BaseException as error:  # passed to the caller below
                failure.append(error)
                acquired.set()

        holder = threading.Thread(target=hold, daemon=True, name="traintrain-gpu-lock")
        holder.start()
        acquired.wait()
        if failure:
            raise failure[0]
        self._release, self._holder = release, holder
        try:
            self.host.unload_model()
        except BaseException:
            self._let_go()
            raise

    def after_job(self) -> None:
        try:
            self.host.reload_model()
        finally:
            self._let_go()

    def _let_go(self) -> None:
        release, holder, self._release, self._holder = self._release, self._holder, None, None
        if release is not None and holder is not None:
            release.set()
            holder.join()


_managers: dict[Path, JobManager] = {}
_managers_lock = threading.Lock()


def host_manager(host: Host) -> JobManager:
    """The job manager on the host's folders: one per process, so that a host rebuilding its UI
    (the Web-UI's "Reload UI") finds the running job instead of a queue locked by itself."""
    data_dir = Path(host.data_dir).resolve()
    with _managers_lock:
        manager = _managers.get(data_dir)
        if manager is None:
            manager = JobManager(data_dir, lora_dir=host.lora_dir, hooks=HostJobHooks(host))
            _managers[data_dir] = manager
        return manager


def picker_lists(host: Host) -> Callable[[], dict[str, list[str]]]:
    """The form's picked fields and the host's lists for them, read again at each call (refresh)."""
    return lambda: {"model": host.list_models(), "model_vae": host.list_vaes()}


def build_host_app(host: Host):
    """The same Blocks as `traintrain ui`, unlaunched, on the host's folders, models and GPU."""
    from traintrain.ui.app import build_app

    return build_app(host_manager(host), output_dir=Path(host.data_dir), lists=picker_lists(host))
