"""modules/sd_vae.py: vae_dict (file name -> path) and refresh_vae_list(), over models/VAE and
the *.vae.* files beside the checkpoints, as both hosts fill it."""

import glob
import os

from modules import paths

vae_dict: dict = {}


def refresh_vae_list():
    vae_dict.clear()
    checkpoints = os.path.join(paths.models_path, "Stable-diffusion")
    patterns = [os.path.join(checkpoints, f"**/*.vae.{suffix}") for suffix in ("ckpt", "pt", "safetensors")]
    patterns += [os.path.join(paths.models_path, "VAE", f"**/*.{suffix}") for suffix in ("ckpt", "pt", "safetensors")]
    for pattern in patterns:
        for path in glob.iglob(pattern, recursive=True):
            vae_dict[os.path.basename(path)] = path
