"""The loaded parts of a model that training and rendering need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from traintrain.models.families import SD_FAMILIES, SPECS, Family, FamilySpec

if TYPE_CHECKING:
    from diffusers import (
        AutoencoderKL,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        UNet2DConditionModel,
        ZImageTransformer2DModel,
    )

    from traintrain.models.prediction import PredictionChoice


@dataclass
class ModelComponents:
    """Denoiser, VAE, text encoder(s) and tokenizer(s) of one model, in diffusers/transformers classes.

    The denoiser is the network the adapters train: a UNet2DConditionModel for SD1/SD2/SDXL, a
    FluxTransformer2DModel for Flux, an SD3Transformer2DModel for SD3. `unet` names it in the SD code paths,
    `transformer` in the transformer families'.
    SD1/SD2 have one text encoder and tokenizer; SDXL has two (CLIP-L first, OpenCLIP-bigG second);
    Flux has CLIP-L (pooled) first and T5 second; SD3 has CLIP-L, CLIP-G (both with projection) and T5,
    which may be absent; Z-Image has one Qwen3 model and its Qwen2 tokenizer.
    """

    family: Family
    denoiser: UNet2DConditionModel | FluxTransformer2DModel | SD3Transformer2DModel | ZImageTransformer2DModel
    vae: AutoencoderKL
    text_encoders: list = field(default_factory=list)  # transformers CLIPTextModel(WithProjection), T5EncoderModel
    tokenizers: list = field(default_factory=list)  # transformers CLIPTokenizer, T5TokenizerFast
    v_prediction: bool = False
    prediction: PredictionChoice | None = None  # how v_prediction was decided (declared by files, probed, set)
    source: str = ""  # path the model came from, for messages and metadata
    scheduler_config: dict = field(default_factory=dict)  # a folder's own flow schedule (models/flow_schedule.py)

    @property
    def unet(self) -> UNet2DConditionModel:
        """The UNet of an SD-family model; Flux and SD3 have none (their denoiser is `transformer`)."""
        if self.family not in SD_FAMILIES:
            raise AttributeError(
                f"a {self.family.value} model has a transformer, not a UNet: use components.transformer")
        return self.denoiser  # SD families hold a UNet2DConditionModel

    @unet.setter
    def unet(self, value: UNet2DConditionModel) -> None:
        self.denoiser = value

    @property
    def transformer(self) -> FluxTransformer2DModel | SD3Transformer2DModel | ZImageTransformer2DModel:
        """The transformer of a Flux, SD3 or Z-Image model."""
        if self.family in SD_FAMILIES:
            raise AttributeError(f"a {self.family.value} model has a UNet, not a transformer: use components.unet")
        return self.denoiser  # Flux / SD3 hold their transformer

    @property
    def spec(self) -> FamilySpec:
        return SPECS[self.family]

    @property
    def latent_factor(self) -> int:
        """Pixels per latent pixel: 8 in every real family's VAE (4 in the toy world's three-level one)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)
