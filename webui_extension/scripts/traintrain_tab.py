"""The TrainTrain tab of AUTOMATIC1111's and Forge's Web-UI: the app of `traintrain ui` on the host's paths and GPU.

The Web-UI loads this file as a script. It touches six things of the host: `script_callbacks.on_ui_tabs`,
the checkpoint list of `sd_models`, the VAE list of `sd_vae`, `shared.cmd_opts.lora_dir` (with `paths.models_path`),
`call_queue.queue_lock`, and the calls that free and reload the host's model (A1111:
`sd_models.unload_model_weights` / `reload_model_weights`; Forge:
`backend.memory_management.unload_all_models` / `sd_models.forge_model_reload`).
"""

from __future__ import annotations

import importlib.util
from contextlib import AbstractContextManager
from pathlib import Path

from modules import call_queue, paths, script_callbacks, sd_models, sd_vae, shared

from traintrain.ui.host import build_host_app

EXTENSION_DIR = Path(__file__).resolve().parents[1]


def is_forge() -> bool:
    return importlib.util.find_spec("modules_forge") is not None


class WebUIHost:
    """A plain class: the host runs this file without registering it in sys.modules, where a dataclass
    (with postponed annotations) would look for its module."""

    def __init__(self, lora_dir: Path, data_dir: Path, forge: bool):
        self.lora_dir, self.data_dir, self.forge = lora_dir, data_dir, forge

    def list_models(self) -> list[str]:
        sd_models.list_models()  # the host's own refresh: its Stable-diffusion folder and --ckpt-dir
        return sorted(info.filename for info in sd_models.checkpoints_list.values())

    def list_vaes(self) -> list[str]:
        sd_vae.refresh_vae_list()  # its VAE folder, --vae-dir and *.vae.* files beside the checkpoints
        return sorted(sd_vae.vae_dict.values())

    def gpu_lock(self) -> AbstractContextManager:
        return call_queue.queue_lock

    def unload_model(self) -> None:
        if self.forge:
            from backend import memory_management

            memory_management.unload_all_models()
        else:
            sd_models.unload_model_weights()

    def reload_model(self) -> None:
        if self.forge:
            sd_models.forge_model_reload()
        else:
            sd_models.reload_model_weights()


def webui_host() -> WebUIHost:
    lora_dir = getattr(shared.cmd_opts, "lora_dir", None) or Path(paths.models_path) / "Lora"
    return WebUIHost(Path(lora_dir), EXTENSION_DIR / "data", is_forge())


def on_ui_tabs():
    return [(build_host_app(webui_host()), "TrainTrain", "traintrain")]


script_callbacks.on_ui_tabs(on_ui_tabs)
