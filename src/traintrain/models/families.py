"""What distinguishes SD1.x, SD2.x, SDXL, SD3/SD3.5, Flux.1 and Z-Image, and how to tell them apart from
checkpoint keys."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Family(str, enum.Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    FLUX = "flux"
    SD3 = "sd3"
    ZIMAGE = "zimage"


# The UNet families (DDPM noise schedule, LDM single files); Flux, SD3 and Z-Image have their own paths.
SD_FAMILIES = (Family.SD1, Family.SD2, Family.SDXL)
# The transformer families: a diffusers transformer as denoiser, trained on the flow-matching objective.
TRANSFORMER_FAMILIES = (Family.FLUX, Family.SD3, Family.ZIMAGE)


@dataclass(frozen=True)
class FamilySpec:
    family: Family
    latent_scale: float
    base_model_version: str  # kohya's ss_base_model_version
    modelspec_architecture: str  # modelspec.architecture of a LoRA for this family
    text_encoder_prefixes: tuple[str, ...]  # kohya LoRA key prefixes, one per text encoder
    modelspec_architecture_v: str = ""  # the architecture of a LoRA for the family's v-prediction model
    latent_shift: float = 0.0  # subtracted before scaling: latents = (sample - shift) * scale (Flux's VAE)
    latent_channels: int = 4
    modelspec_implementation: str = "https://github.com/Stability-AI/generative-models"

    @property
    def flow_matching(self) -> bool:
        """Trained on the rectified-flow objective (Flux, SD3, Z-Image) instead of DDPM's noise schedule."""
        return self.family in TRANSFORMER_FAMILIES

    def architecture(self, v_prediction: bool) -> str:
        """modelspec.architecture: SD2's v models are their own architecture (768-v) there."""
        return (self.modelspec_architecture_v or self.modelspec_architecture) if v_prediction else (
            self.modelspec_architecture
        )


SPECS: dict[Family, FamilySpec] = {
    Family.SD1: FamilySpec(Family.SD1, 0.18215, "sd_v1", "stable-diffusion-v1/lora", ("lora_te",)),
    Family.SD2: FamilySpec(
        Family.SD2, 0.18215, "sd_v2", "stable-diffusion-v2-512/lora", ("lora_te",), "stable-diffusion-v2-768-v/lora"
    ),
    Family.SDXL: FamilySpec(
        Family.SDXL, 0.13025, "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora", ("lora_te1", "lora_te2")
    ),
    # kohya's flux LoRAs name CLIP-L lora_te1 (T5 lora_te3); modelspec and base version as sd-scripts writes them.
    Family.FLUX: FamilySpec(
        Family.FLUX, 0.3611, "flux1", "flux-1-dev/lora", ("lora_te1",), latent_shift=0.1159, latent_channels=16,
        modelspec_implementation="https://github.com/black-forest-labs/flux",
    ),
    # SD3's CLIP-L and CLIP-G are kohya's lora_te1 / lora_te2 (T5 lora_te3). sd-scripts writes the MMDiT variant
    # as ss_base_model_version ("medium", "5-medium", "5-large") and "stable-diffusion-3-<variant>" as the
    # architecture (sai_model_spec.py); we write "sd3", which names the family, and read theirs too.
    Family.SD3: FamilySpec(
        Family.SD3, 1.5305, "sd3", "stable-diffusion-3-medium/lora", ("lora_te1", "lora_te2"), latent_shift=0.0609,
        latent_channels=16, modelspec_implementation="diffusers",
    ),
    # Z-Image (Tongyi-MAI): Flux's 16-channel VAE, its scale and shift; one Qwen3 text encoder (not trained here).
    # musubi-tuner writes modelspec.architecture "Z-Image/lora" and no ss_base_model_version; we write "zimage"
    # (the family's name) there and read musubi-tuner's architecture too.
    Family.ZIMAGE: FamilySpec(
        Family.ZIMAGE, 0.3611, "zimage", "Z-Image/lora", ("lora_te1",), latent_shift=0.1159, latent_channels=16,
        modelspec_implementation="https://github.com/Tongyi-MAI/Z-Image",
    ),
}
# ss_base_model_version values kohya's sd-scripts writes for SD3 / SD3.5 LoRAs (the MMDiT variant).
SD3_KOHYA_VERSIONS = ("medium", "5-medium", "5-large")

# Training noise schedule shared by all families (BEHAVIOR.md).
NOISE_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
)


def detect_family_from_ldm_keys(keys) -> Family | None:
    """Family of an A1111/LDM single-file checkpoint, from its key names; None if not SD."""
    keys = set(keys)
    if (
        any(k.startswith("conditioner.embedders.") for k in keys)
        or "model.diffusion_model.label_emb.0.0.weight" in keys
    ):
        return Family.SDXL
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return Family.SD2
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return Family.SD1
    return None


# Black Forest Labs' single-file transformer layout (flux1-dev.safetensors), bare or under ComfyUI's prefix.
FLUX_MARKERS = ("double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight")
FLUX_PREFIXES = ("", "model.diffusion_model.")


def is_flux_checkpoint(keys) -> bool:
    """The file holds a Flux.1 transformer in the reference (BFL) layout."""
    return _holds(keys, FLUX_MARKERS)


# Stability AI's single-file MMDiT layout (sd3_medium*.safetensors, sd3.5_*.safetensors), bare or under the prefix.
SD3_MARKERS = ("joint_blocks.0.x_block.attn.qkv.weight", "context_embedder.weight")


def is_sd3_checkpoint(keys) -> bool:
    """The file holds an SD3 / SD3.5 MMDiT in the reference layout."""
    return _holds(keys, SD3_MARKERS)


def sd3_variant(config) -> str:
    """kohya's name of an SD3Transformer2DModel's variant: 3.5 adds q/k norms, 3.5 Medium also a second
    attention in its first blocks (sd-scripts' analyze_state_dict_state)."""
    if not config.get("qk_norm"):
        return "medium"
    return "5-medium" if config.get("dual_attention_layers") else "5-large"


# The reference single-file Z-Image transformer (z_image_turbo_bf16.safetensors): fused attention qkv, bare or
# under the prefix; diffusers' convert_z_image_transformer_checkpoint_to_diffusers reads it.
# Z-Image modulates each layer through `adaLN_modulation.0`; Lumina 2, whose files share every other name
# (its next-DiT is Z-Image's ancestor), through `adaLN_modulation.1` (diffusers tells them apart so too).
NEXT_DIT_MARKERS = ("layers.0.attention.qkv.weight", "cap_embedder.1.weight", "noise_refiner.0.attention.qkv.weight")
ZIMAGE_MODULATION, LUMINA2_MODULATION = "layers.0.adaLN_modulation.0.weight", "layers.0.adaLN_modulation.1.weight"
ZIMAGE_MARKERS = (*NEXT_DIT_MARKERS, ZIMAGE_MODULATION)
LUMINA2_MARKERS = (*NEXT_DIT_MARKERS, LUMINA2_MODULATION)


def is_zimage_checkpoint(keys) -> bool:
    """The file holds a Z-Image transformer in the reference layout."""
    return _holds(keys, ZIMAGE_MARKERS)


def is_lumina2_checkpoint(keys) -> bool:
    """The file holds a Lumina 2 transformer: Z-Image's key names, its own modulation."""
    return _holds(keys, LUMINA2_MARKERS)


def _holds(keys, markers: tuple[str, ...]) -> bool:
    keys = set(keys)
    return any(all(prefix + marker in keys for marker in markers) for prefix in FLUX_PREFIXES)
