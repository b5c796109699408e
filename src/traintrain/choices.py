"""The closed sets of values parameters may take, matched case-insensitively from user text."""

from __future__ import annotations

import enum

from traintrain.errors import UserError


class Choice(str, enum.Enum):
    """An enum whose values are matched case-insensitively from user text."""

    @classmethod
    def parse(cls, text: str, field_name: str):
        if isinstance(text, cls):
            return text
        wanted = str(text).strip().lower()
        for member in cls:
            if member.value.lower() == wanted:
                return member
        allowed = ", ".join(m.value for m in cls)
        raise UserError(f"'{text}' is not one of: {allowed}", field=field_name)


class NetworkType(Choice):
    LIERLA = "lierla"
    C3LIER = "c3lier"
    LOHA = "loha"
    LOKR = "lokr"


class NetworkElement(Choice):
    """Which layers of the chosen blocks an adapter trains. CrossAttentionKV keeps to the cross-attention's
    key and value projections, the only layers that read the prompt (as Custom Diffusion trains them);
    CrossAttentionV to the value projection alone, what the prompt's tokens write into the picture. A
    concept edit (iLECO) then moves the prompts that hold the concept and leaves the rest nearly alone."""

    FULL = "Full"
    CROSS_ATTENTION = "CrossAttention"
    CROSS_ATTENTION_KV = "CrossAttentionKV"
    CROSS_ATTENTION_V = "CrossAttentionV"
    SELF_ATTENTION = "SelfAttention"

    @property
    def cross_attention_only(self) -> bool:
        return self in (NetworkElement.CROSS_ATTENTION, NetworkElement.CROSS_ATTENTION_KV,
                        NetworkElement.CROSS_ATTENTION_V)


class Optimizer(Choice):
    ADAMW = "AdamW"
    ADAMW8BIT = "AdamW8bit"
    ADAM8BIT = "Adam8bit"
    LION = "Lion"
    LION8BIT = "Lion8bit"
    PAGED_ADAMW8BIT = "PagedAdamW8bit"
    SGD_NESTEROV = "SGDNesterov"
    SGD_NESTEROV8BIT = "SGDNesterov8bit"
    ADAFACTOR = "AdaFactor"
    PRODIGY = "Prodigy"
    DADAPT_ADAM = "DAdaptAdam"
    DADAPT_LION = "DAdaptLion"
    DADAPT_ADAGRAD = "DAdaptAdaGrad"
    DADAPT_ADAN = "DAdaptAdan"
    DADAPT_SGD = "DAdaptSGD"
    ADAMW_SCHEDULE_FREE = "AdamWScheduleFree"
    RADAM_SCHEDULE_FREE = "RAdamScheduleFree"
    SGD_SCHEDULE_FREE = "SGDScheduleFree"
    CAME = "CAME"
    ADAM = "Adam"
    PAGED_ADAMW = "PagedAdamW"
    PAGED_ADAMW32BIT = "PagedAdamW32bit"
    PAGED_LION8BIT = "PagedLion8bit"
    TIGER = "Tiger"
    ADAM_MINI = "AdamMini"


class LRScheduler(Choice):
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    LINEAR = "linear"
    POLYNOMIAL = "polynomial"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    PIECEWISE_CONSTANT = "piecewise_constant"
    STEP = "step"
    COSINE_ANNEALING = "cosine_annealing"
    COSINE_ANNEALING_WITH_RESTARTS = "cosine_annealing_with_restarts"
    EXPONENTIAL = "exponential"
    MULTI_STEP = "multi_step"
    REDUCE_ON_PLATEAU = "reduce_on_plateau"
    CYCLIC = "cyclic"
    ONE_CYCLE = "one_cycle"


class LossFunction(Choice):
    MSE = "MSE"
    L1 = "L1"
    SMOOTH_L1 = "smooth_L1"


class NanPolicy(Choice):
    STOP = "stop"
    SKIP = "skip"


class ILECOLatent(Choice):
    """Where iLECO's latents come from: a fresh draw each step, a small pool drawn once, or the
    original's single draw reused every step."""

    FRESH = "fresh"
    POOL = "pool"
    ONCE = "once"


class Precision(Choice):
    """A floating-point dtype: what the trained network, the VAE and the saved file are kept in."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class ModelPrecision(Choice):
    """The frozen model's precision: a float dtype, or 8-bit weights (int8 or fp8 e4m3, per-channel
    scaled) that compute in bf16 on a GPU and fp32 on the CPU. The 8-bit forms halve the model's
    memory against fp16 but cannot be trained or saved, so only the frozen model offers them."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"
    FP8 = "fp8"


class NoiseScheduler(Choice):
    """Samplers for preview images: the original's list (its spelling), plus DPM++ 2M (Karras) and UniPC."""

    DDIM = "DDIM"
    DDPM = "DDPM"
    PNDM = "PNDM"
    LMS = "LMS"
    EULER = "Euler"
    EULER_A = "Euler a"
    DPM_SOLVER = "DPMSolver"
    DPM_SINGLE = "DPMsingle"
    HEUN = "Heun"
    DPM_2 = "DPM 2"
    DPM_2_A = "DPM 2 a"
    DPM_PP_2M = "DPM++ 2M"
    DPM_PP_2M_KARRAS = "DPM++ 2M Karras"
    UNIPC = "UniPC"


TEXT_ENCODER_BLOCK = "BASE"  # the block id that selects the text encoder(s)
UNET_BLOCK_IDS = tuple(
    [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
)
ALL_BLOCK_IDS = (TEXT_ENCODER_BLOCK,) + UNET_BLOCK_IDS
# Flux.1's transformer: 19 double-stream blocks (D00-D18) and 38 single-stream blocks (S00-S37), as its
# reference code numbers double_blocks.N and single_blocks.N. Not in the default selection: every UNet
# id selected (the default) means every block of whatever model is trained.
FLUX_BLOCK_IDS = tuple([f"D{i:02d}" for i in range(19)] + [f"S{i:02d}" for i in range(38)])
# SD3 / SD3.5's MMDiT: joint blocks J00-J37 (24 in SD3 Medium and SD3.5 Medium, 38 in SD3.5 Large), as its
# reference code numbers joint_blocks.N.
SD3_BLOCK_IDS = tuple(f"J{i:02d}" for i in range(38))
# Z-Image's S3-DiT: main layers L00-L29 (layers.N), noise refiner N00-N01 and context refiner C00-C01.
ZIMAGE_BLOCK_IDS = tuple([f"L{i:02d}" for i in range(30)] + [f"{letter}{i:02d}" for letter in "NC" for i in range(2)])
