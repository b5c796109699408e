"""An external VAE (`model_vae`) in place of the model's own, as the original's VAE dropdown.

Accepted offline: A1111 single files (`.safetensors`/`.pt`/`.ckpt`) in the LDM layout (`encoder.down.*`,
with or without `first_stage_model.`), single files already in diffusers' layout, and diffusers VAE
folders (`config.json` + weights). SD1, SD2 and SDXL VAEs share one architecture, so the shapes cannot
tell a wrong one; what matters is the latent space the UNet was trained on. A folder's `scaling_factor`
must be the family's, and every VAE must encode a fixed probe image like the model's own VAE does.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from traintrain.errors import UserError
from traintrain.models.assembly import assemble, load_pretrained
from traintrain.models.checkpoint_reading import read_checkpoint
from traintrain.models.components import ModelComponents
from traintrain.models.families import SPECS, Family, detect_family_from_ldm_keys
from traintrain.models.ldm_convert import VAE_PREFIX, vae_to_ldm
from traintrain.models.sd_loading import vae_config_from_ldm
from traintrain.training.events import Message, Reporter, ignore

FIELD = "model_vae"
VAE_KEY_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
LDM_MARKER = "encoder.down.0.block.0.conv1.weight"
DIFFUSERS_MARKER = "encoder.down_blocks.0.resnets.0.conv1.weight"
FIX = "give a VAE made for {family} models, or leave model_vae empty to use the model's own"

PROBE_SIZE = 64
"""Probe side in pixels: 8x8 latents per channel, a fraction of a second even for a full-size VAE on a CPU."""

MIN_LATENT_CORRELATION = 0.8
"""Lowest per-channel correlation of the probe's latents with the model's own VAE's that is accepted.

A UNet only works on the latents it was trained on, so every VAE made for a model keeps them: a
decoder-only fine-tune (vae-ft-mse-840000) has the very same encoder (1.0), encoder fine-tunes and
the SDXL fp16-fix stay above 0.95. VAEs trained separately (SD1/SD2's and SDXL's) share at most a
rough brightness channel; the probe's red, green and blue carry unrelated patterns, so the channels
that encode colour disagree (below 0.5, often negative). The minimum over channels, not an average,
is compared so that two agreeing brightness channels cannot hide two disagreeing colour ones.
"""


def use_external_vae(components: ModelComponents, path: str | Path, report: Reporter = ignore) -> None:
    """Replace `components.vae` by the VAE at `path` once it is shown to share the model's latent space.

    It takes the dtype of the VAE it replaces, so training and previews treat it exactly like that one.
    """
    path = Path(path)
    external = load_vae(path, components.family)
    own = components.vae
    if external.dtype != own.dtype:  # diffusers warns about any cast, even a no-op one
        external.to(own.dtype)
    external.eval().requires_grad_(False)
    correlation = check_latent_space(external, own, components.family, path)
    if correlation is None:
        report(Message(f"VAE: {path} (the model's own VAE gives no usable latents to compare it with; "
                       "used unchecked)", "warning"))
    else:
        report(Message(f"VAE: {path} instead of the model's own (latents agree with it: correlation "
                       f"{correlation:.2f})"))
    components.vae = external


def load_vae(path: Path, family: Family) -> AutoencoderKL:
    """The VAE in a single file (LDM or diffusers layout) or a diffusers VAE folder, read offline."""
    if not path.exists():
        raise UserError(f"{path}: no such file or folder", FIX.format(family=family.value), field=FIELD)
    try:
        return _load_folder(path) if path.is_dir() else _load_single_file(path, family)
    except UserError as error:
        if error.field == FIELD:
            raise
        # the model readers (models/assembly.py) name the model field; here the same problem is the VAE's
        raise UserError(error.problem, error.fix, field=FIELD) from error


def _load_folder(path: Path) -> AutoencoderKL:
    config_file = path / "config.json"
    if not config_file.is_file():
        whole_model = (path / "model_index.json").is_file()
        problem = "a whole diffusers model, not a VAE folder" if whole_model else "no config.json in this folder"
        raise UserError(f"{path}: {problem}", "give a diffusers VAE folder (config.json and weights, such as a "
                        "model's vae/ folder) or a single VAE file", field=FIELD)
    kind = json.loads(config_file.read_text()).get("_class_name", "AutoencoderKL")
    if kind != "AutoencoderKL":
        raise UserError(f"{path}: the folder holds a {kind}, not a VAE (AutoencoderKL)",
                        "give a diffusers VAE folder or a single VAE file", field=FIELD)
    return load_pretrained(AutoencoderKL, path.parent, path.name)


def _load_single_file(path: Path, family: Family) -> AutoencoderKL:
    state = _ldm_vae_weights(path, read_checkpoint(path))
    try:
        config = vae_config_from_ldm(family, state)
    except (KeyError, IndexError, ValueError) as error:
        raise UserError(f"{path}: VAE with missing or odd weights ({error})",
                        "the file is incomplete or not a Stable Diffusion VAE", field=FIELD) from error
    return assemble(AutoencoderKL.from_config, config, lambda m: convert_ldm_vae_checkpoint(state, config), path, "VAE")


def _ldm_vae_weights(path: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE weights under `first_stage_model.` in LDM names, whichever layout the file uses.

    Keys outside the VAE that VAE files carry (`loss.*` of the training, `model_ema.*` counters) are dropped.
    """
    if detect_family_from_ldm_keys(state.keys()) is not None:
        raise UserError(f"{path}: a whole Stable Diffusion model, not a VAE",
                        "give a VAE file (such as vae-ft-mse-840000), or leave model_vae empty for the model's own",
                        field=FIELD)
    if any(key.startswith(("lora_", "lycoris_")) for key in state):
        raise UserError(f"{path}: a LoRA, not a VAE", "give a VAE file or a diffusers VAE folder", field=FIELD)
    unprefixed = {key.removeprefix(VAE_PREFIX): value for key, value in state.items()}
    weights = {key: value for key, value in unprefixed.items() if key.startswith(VAE_KEY_PREFIXES)}
    if LDM_MARKER in weights:
        return {VAE_PREFIX + key: value for key, value in weights.items()}
    if DIFFUSERS_MARKER in weights:
        try:
            return vae_to_ldm(weights, _diffusers_layout(weights))
        except ValueError as error:
            raise UserError(f"{path}: VAE in diffusers' layout with unknown weights ({error})",
                            "the file is incomplete or an unsupported variant", field=FIELD) from error
    raise UserError(f"{path}: not a VAE (no encoder.* / decoder.* weights)",
                    "give a VAE file (.safetensors/.pt/.ckpt) or a diffusers VAE folder", field=FIELD)


def _diffusers_layout(weights) -> SimpleNamespace:
    """What vae_to_ldm's name map reads of a config: the number of levels and of resnets per level."""
    levels = {key.split(".")[2] for key in weights if key.startswith("encoder.down_blocks.")}
    resnets = {key.split(".")[4] for key in weights if key.startswith("encoder.down_blocks.0.resnets.")}
    return SimpleNamespace(block_out_channels=range(len(levels)), layers_per_block=len(resnets))


def check_latent_space(external: AutoencoderKL, own: AutoencoderKL, family: Family, path: Path) -> float | None:
    """Refuse a VAE whose latents the model's UNet was not trained on, naming what it looks like.

    Returns the probe's correlation, or None when the model's own VAE gives nothing to compare with.
    """
    fix = FIX.format(family=family.value)
    channels, expected = external.config.latent_channels, own.config.latent_channels
    if channels != expected:
        raise UserError(f"{path}: a VAE with {channels} latent channels (SD3/Flux VAEs have 16); "
                        f"{family.value} models use {expected}", fix, field=FIELD)
    scale, expected_scale = external.config.scaling_factor, SPECS[family].latent_scale
    if abs(scale - expected_scale) > 1e-4:
        raise UserError(f"{path}: a VAE with scaling_factor {scale:g} ({_families_with_scale(scale)}) on a "
                        f"{family.value} model (its VAE uses {expected_scale:g})", fix, field=FIELD)
    probe = probe_image()
    latents = _probe_latents(external, probe)
    if not torch.isfinite(latents).all():
        raise UserError(f"{path}: the VAE encodes a test image to non-finite values", "the file is broken; "
                        "download it again", field=FIELD)
    correlation = channel_correlation(latents, _probe_latents(own, probe))
    if correlation is not None and correlation < MIN_LATENT_CORRELATION:
        raise UserError(f"{path}: its latents do not match the {family.value} model's own VAE (correlation "
                        f"{correlation:.2f}, same-space VAEs give over {MIN_LATENT_CORRELATION}): it looks like "
                        f"{_other_latent_space(family)} VAE", fix, field=FIELD)
    return correlation


def _families_with_scale(scale: float) -> str:
    names = [spec.family.value for spec in SPECS.values() if abs(spec.latent_scale - scale) <= 1e-4]
    return f"as {'/'.join(names)} VAEs use" if names else "no SD1/SD2/SDXL VAE uses it"


def _other_latent_space(family: Family) -> str:
    """SD1 and SD2 share one VAE; SDXL has its own."""
    return "an SD1/SD2" if family is Family.SDXL else "an SDXL"


def channel_correlation(latents: torch.Tensor, expected: torch.Tensor) -> float | None:
    """Lowest per-channel Pearson correlation of two [channels, positions] latents (a flat channel counts 0).

    None when `expected` is unusable: non-finite, or a channel without variation.
    """
    expected = expected - expected.mean(dim=1, keepdim=True)
    spread = expected.norm(dim=1)
    if not torch.isfinite(expected).all() or not (spread > 0).all():
        return None
    latents = latents - latents.mean(dim=1, keepdim=True)
    per_channel = (latents * expected).sum(dim=1) / (latents.norm(dim=1) * spread)
    return float(torch.nan_to_num(per_channel, nan=0.0).min())


def probe_image(size: int = PROBE_SIZE) -> torch.Tensor:
    """A fixed [1, 3, size, size] image in [-1, 1]: smooth red, striped green, a checkered blue.

    Each colour carries its own pattern, so a latent channel that encodes colour differently in two
    VAEs shows up as a low correlation instead of being averaged away.
    """
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    red = torch.sin(3.0 * x + 1.0) * torch.cos(2.0 * y)
    green = torch.cos(5.0 * y - 2.0 * x)
    blue = ((4 * x).floor() + (4 * y).floor()).remainder(2) * 1.2 - 0.6 + 0.3 * x
    return torch.stack([red, green, blue]).clamp(-1, 1)[None]


@torch.no_grad()
def _probe_latents(vae: AutoencoderKL, probe: torch.Tensor) -> torch.Tensor:
    """[channels, positions] latent means in float64 for exact statistics."""
    parameter = next(vae.parameters())
    mean = vae.encode(probe.to(parameter.device, parameter.dtype)).latent_dist.mean[0]
    return mean.double().cpu().flatten(1)
