"""modules/sd_models.py: checkpoints_list, list_models(), unload_model_weights(), reload_model_weights(),
and Forge's forge_model_reload()."""

import os
from dataclasses import dataclass

from modules import paths, shared
from modules.host_calls import record

checkpoints_list: dict = {}


@dataclass
class CheckpointInfo:
    filename: str

    @property
    def title(self):
        return os.path.basename(self.filename)


def list_models():
    checkpoints_list.clear()
    folders = [os.path.join(paths.models_path, "Stable-diffusion"), shared.cmd_opts.ckpt_dir]
    for folder in filter(None, folders):
        for root, _, files in os.walk(folder):
            for name in sorted(files):
                if name.endswith((".safetensors", ".ckpt")):
                    info = CheckpointInfo(os.path.join(root, name))
                    checkpoints_list[info.title] = info


def unload_model_weights(sd_model=None, info=None):
    record("unload_model_weights")


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    record("reload_model_weights")


def forge_model_reload():
    record("forge_model_reload")
    return None, False
