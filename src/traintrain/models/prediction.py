"""Which objective a model was trained on (epsilon or v-prediction), decided before training.

A single-file SD2 checkpoint usually comes without the `.yaml` that says "parameterization: v"
(SD2.1-768-v is downloaded that way), and training a v model on the epsilon objective gives a
useless LoRA without a word. So when no file says it, SD2 UNets are asked, the way A1111 asks
them (`sd_models_config.is_using_v_parameterization_for_sd2`): one forward pass on a flat 0.5
latent and a flat 0.5 context at the last timestep. There the input is almost pure noise, so an
epsilon model returns about its input, while a v model returns about minus the expected clean
latent (v = sqrt(a) * noise - sqrt(1 - a) * x0, with a ~ 0); A1111 calls it v when the mean of
(output - input) is below -1. An untrained UNet returns small values around zero (mean of
output - input near -0.5), so it stays epsilon.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from traintrain.models.families import Family

V_PARAMETERIZATION = re.compile(r"""^\s*parameterization:\s*["']?v["']?\s*$""", re.MULTILINE)
PROBE_TIMESTEP = 999
PROBE_VALUE = 0.5
PROBE_LATENT_SIDE = 8
V_THRESHOLD = -1.0  # A1111's: mean(output - input) below this means v-prediction


@dataclass(frozen=True)
class PredictionChoice:
    """The objective to train on and the one-line reason, for the run's messages."""

    v_prediction: bool
    reason: str
    against_evidence: bool = False  # the user's setting contradicts the files or the probe: warn

    @property
    def name(self) -> str:
        return "v-prediction" if self.v_prediction else "epsilon"

    def describe(self) -> str:
        return f"training objective {self.name}: {self.reason}"


def declared_prediction(path: Path, state_keys=()) -> PredictionChoice | None:
    """What the model's own files say: a `v_pred` marker key, the diffusers scheduler config or a
    `X.yaml` beside a single file; None when they say nothing."""
    if "v_pred" in state_keys:  # e.g. SDXL v-prediction fine-tunes carry an empty marker tensor
        return PredictionChoice(True, "the checkpoint has a v_pred marker key")
    if path.is_dir():
        scheduler = path / "scheduler" / "scheduler_config.json"
        if scheduler.is_file():
            kind = json.loads(scheduler.read_text()).get("prediction_type", "epsilon")
            return PredictionChoice(kind == "v_prediction", f"its scheduler config says prediction_type {kind}")
        return None
    yaml = path.with_suffix(".yaml")
    if yaml.is_file():
        is_v = bool(V_PARAMETERIZATION.search(yaml.read_text(errors="replace")))
        return PredictionChoice(is_v, f"{yaml.name} beside it says {'v' if is_v else 'no v'} parameterization")
    return None


def probe_v_prediction(unet) -> float:
    """A1111's statistic: mean(output - input) of one UNet pass on flat inputs at the last timestep."""
    parameter = next(unet.parameters())
    device, dtype = parameter.device, parameter.dtype
    side = PROBE_LATENT_SIDE
    latent = torch.full((1, unet.config.in_channels, side, side), PROBE_VALUE, device=device, dtype=dtype)
    context = torch.full((1, 77, unet.config.cross_attention_dim), PROBE_VALUE, device=device, dtype=dtype)
    timestep = torch.tensor([PROBE_TIMESTEP], device=device)
    with torch.no_grad():
        output = unet(latent, timestep, encoder_hidden_states=context).sample
    return (output.float() - latent.float()).mean().item()


def choose_prediction(components, declared: PredictionChoice | None, override: bool | None) -> PredictionChoice:
    """The objective to train: the user's setting, else what the files declare, else (SD2 only) the probe.

    When the user's setting contradicts the files or the probe, the reason says so, so the run's
    message warns about it.
    """
    found = declared or _probed(components)
    if override is None:
        return found
    wanted = "v-prediction" if override else "epsilon"
    if found.v_prediction == override:
        return PredictionChoice(override, f"set by model_v_pred (and {found.reason})")
    return PredictionChoice(
        override, f"set by model_v_pred, although {found.reason}; training {wanted} as set", against_evidence=True
    )


def _probed(components) -> PredictionChoice:
    if components.family is not Family.SD2:
        return PredictionChoice(False, f"{components.family.value} models are epsilon unless their files say v")
    statistic = probe_v_prediction(components.unet)
    verdict = "v" if statistic < V_THRESHOLD else "epsilon"
    return PredictionChoice(
        statistic < V_THRESHOLD,
        f"A1111's check on the UNet gave {statistic:.2f} (below {V_THRESHOLD:g} means v), so {verdict}; "
        "no yaml or scheduler config says it",
    )
