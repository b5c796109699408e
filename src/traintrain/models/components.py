"""The loaded parts of a Stable Diffusion model that training and rendering need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from traintrain.models.families import SPECS, Family, FamilySpec

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from traintrain.models.prediction import PredictionChoice


@dataclass
class ModelComponents:
    """UNet, VAE, text encoder(s) and tokenizer(s) of one model, in diffusers/transformers classes.

    SD1/SD2 have one text encoder and tokenizer; SDXL has two (CLIP-L first, OpenCLIP-bigG second).
    """

    family: Family
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list = field(default_factory=list)  # transformers CLIPTextModel / CLIPTextModelWithProjection
    tokenizers: list = field(default_factory=list)  # transformers CLIPTokenizer
    v_prediction: bool = False
    prediction: PredictionChoice | None = None  # how v_prediction was decided (declared by files, probed, set)
    source: str = ""  # path the model came from, for messages and metadata

    @property
    def spec(self) -> FamilySpec:
        return SPECS[self.family]

    @property
    def latent_factor(self) -> int:
        """Pixels per latent pixel: 8 in every real family's VAE (4 in the toy world's three-level one)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)
