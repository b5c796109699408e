"""The noise schedule of the flow-matching families (Flux.1, SD3/SD3.5, Z-Image), read from the model.

The schedule lives in a model's scheduler config, not in its family: FLUX.1-dev shifts with the image
size (`use_dynamic_shifting`), FLUX.1-schnell has a fixed shift of 1, SD3.5 and Z-Image-Turbo a fixed 3.0,
and a later release of the same architecture may ship another value. Training and previews both read
`scheduler_config(components)`: the diffusers folder's own `scheduler/scheduler_config.json` when the
model came with one, else the family's bundled config (schnell's for a Flux transformer without a
guidance input: single files carry no scheduler).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from traintrain.models.families import Family

TIMESTEPS = 1000
SCHEDULER_FILE = Path("scheduler") / "scheduler_config.json"


def folder_scheduler_config(folder: Path) -> dict:
    """A diffusers folder's own scheduler config ({} when it has none: the family's bundled one applies)."""
    path = folder / SCHEDULER_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def scheduler_config(components) -> dict:
    """The schedule the model was made for: its own config, else its family's (schnell's for a Flux
    transformer without guidance input)."""
    if components.scheduler_config:
        return components.scheduler_config
    from traintrain.models.assembly import config_template

    schnell = components.family is Family.FLUX and not components.denoiser.config.guidance_embeds
    return config_template(components.family, "scheduler_schnell" if schnell else "scheduler")


def dynamic_shift(image_tokens: int, config: dict) -> float:
    """mu, linear in the image's token count (FluxPipeline's calculate_shift on the config's bounds)."""
    base_tokens, max_tokens = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    return base_shift + slope * (image_tokens - base_tokens)


def schedule_sigmas(timesteps: torch.Tensor, image_tokens: int, config: dict) -> torch.Tensor:
    """Noise levels of integer timesteps in [0, 1000), t' = (t + 1) / 1000, as the config's scheduler shifts
    them: exp(mu) / (exp(mu) + 1/t' - 1) with dynamic shifting, else s * t' / (1 + (s - 1) * t')."""
    fraction = (timesteps.double() + 1) / TIMESTEPS
    if config.get("use_dynamic_shifting"):
        mu = math.exp(dynamic_shift(image_tokens, config))
        return (mu / (mu + (1 / fraction - 1))).float()
    shift = config.get("shift", 1.0)
    return (shift * fraction / (1 + (shift - 1) * fraction)).float()
