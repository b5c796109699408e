"""Every training parameter in one typed place: defaults, choices, validation, preset JSON in/out.

Faces (CLI, UI, presets) turn user text into a `TrainConfig` here, once, so the core never sees
an unchecked value. Messages name the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from traintrain.choices import (  # noqa: F401 (the choices are part of the configuration's vocabulary)
    ALL_BLOCK_IDS,
    FLUX_BLOCK_IDS,
    SD3_BLOCK_IDS,
    UNET_BLOCK_IDS,
    ZIMAGE_BLOCK_IDS,
    Choice,
    ILECOLatent,
    LossFunction,
    LRScheduler,
    ModelPrecision,
    NanPolicy,
    NetworkElement,
    NetworkType,
    NoiseScheduler,
    Optimizer,
    Precision,
)
from traintrain.errors import UserError
from traintrain.value_parsing import (
    json_type,
    parse_auto_bool,
    parse_bool,
    parse_choice,
    parse_image_size,
    parse_names,
    parse_number,
    parse_text,
)


def _param(default, help: str, *, minimum=None, maximum=None, choices=None, factory=None, parser=None):
    meta = {"help": help, "minimum": minimum, "maximum": maximum, "choices": choices, "parser": parser}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _parse_float_precision(name: str, value: Any) -> Precision:
    """A float precision; int8/fp8 are refused with the fix, as only the frozen model can be stored in them."""
    if isinstance(value, str) and value.strip().lower() in (ModelPrecision.INT8.value, ModelPrecision.FP8.value):
        raise UserError(
            f"{value.strip()} holds only the frozen model's weights; a trained network, the VAE and the saved "
            "file need a float type",
            "choose fp32, bf16 or fp16 here; to store the base model in 8 bits, set train_model_precision",
            field=name,
        )
    return parse_choice(name, value, Precision)


def _parse_mode(name: str, value: Any) -> str:
    """A registered mode's name; the registry (modes/) is asked lazily, as the modes import this module."""
    from traintrain.modes.registry import canonical_mode_name

    return canonical_mode_name(parse_text(name, value), name)


@dataclass
class TrainConfig:
    """All parameters of a training job (the seed's mandatory and optional tables, plus inputs)."""

    # --- job inputs ---
    mode: str = _param(
        "LoRA", "training mode: LoRA, iLECO, Difference, ADDifT, Multi-ADDifT (or a registered one)", parser=_parse_mode
    )
    model: str = _param("", "base model: single-file .safetensors/.ckpt or a diffusers folder")
    model_vae: str = _param(
        "", "external VAE for encoding the images and previews: a single-file .safetensors/.pt/.ckpt (A1111 layout, "
        "e.g. vae-ft-mse-840000 or the SDXL fp16-fix VAE) or a diffusers VAE folder; empty = the model's own"
    )
    original_prompt: str = _param("", "iLECO: the concept to change or erase")
    target_prompt: str = _param("", "iLECO: what the concept becomes (empty = erase)")
    negative_prompt: str = _param("", "negative prompt for previews")
    original_image: str = _param("", "Difference: the original image")
    target_image: str = _param("", "Difference: the target image (same size as the original)")
    # --- mandatory parameters (seed table 1) ---
    network_type: NetworkType = _param(NetworkType.LIERLA, "lierla (LoRA), c3lier (LoCon), loha or lokr (LyCORIS)")
    network_rank: int = _param(16, "LoRA rank (dim)", minimum=1, maximum=1024)
    network_alpha: float = _param(8.0, "LoRA alpha: the update is scaled by alpha / rank", minimum=0.0)
    lora_data_directory: str = _param("", "LoRA: folder of training images (subfolders included)")
    lora_trigger_word: str = _param("", "LoRA: word put before every caption")
    network_blocks: list[str] = _param(
        None, "blocks to train: BASE (text encoder), IN00-IN11, M00, OUT00-OUT11; Flux: D00-D18, S00-S37; "
        "SD3: J00-J37; Z-Image: L00-L29, N00-N01, C00-C01",
        choices=ALL_BLOCK_IDS + FLUX_BLOCK_IDS + SD3_BLOCK_IDS + ZIMAGE_BLOCK_IDS, factory=lambda: list(ALL_BLOCK_IDS),
    )
    train_iterations: int = _param(1000, "number of optimizer steps", minimum=1)
    image_size: list[int] = _param(
        None, "training resolution as height,width (one value = square)", factory=lambda: [512, 512]
    )
    train_batch_size: int = _param(2, "images per step", minimum=1)
    train_learning_rate: float = _param(1e-4, "learning rate", minimum=0.0)
    train_optimizer: Optimizer = _param(Optimizer.ADAMW, "optimizer")
    train_lr_scheduler: LRScheduler = _param(LRScheduler.COSINE, "learning-rate schedule")
    save_lora_name: str = _param("", "file name of the saved LoRA (empty = untitled)")
    use_gradient_checkpointing: bool = _param(False, "trade speed for less memory")
    # --- optional parameters (seed table 2) ---
    network_conv_rank: int = _param(0, "c3lier/loha/lokr: rank of k x k convs (0 = network_rank)", minimum=0)
    network_conv_alpha: float = _param(0.0, "c3lier/loha/lokr: alpha of k x k convs (0 = network_alpha)", minimum=0.0)
    network_element: NetworkElement = _param(
        NetworkElement.FULL,
        "Full, CrossAttention (attn2), CrossAttentionKV (attn2's key and value: the layers that read the prompt), "
        "CrossAttentionV (attn2's value alone: what the prompt writes; best for iLECO's concept edits) or "
        "SelfAttention (attn1)",
    )
    train_lr_step_rules: str = _param(
        "",
        "step: N or N:GAMMA (lr x GAMMA every N steps, GAMMA 0.1 if omitted); piecewise_constant: 1:100,0.1:200,0.01",
    )
    train_lr_scheduler_settings: str = _param(
        "", "extra arguments of the lr schedule (torch class or diffusers function), key=value per line or "
        "';'-separated, e.g. eta_min=1e-6; T_max=500"
    )
    train_lr_scheduler_num_cycles: int = _param(1, "cycles of cosine_with_restarts", minimum=1)
    train_lr_scheduler_power: float = _param(1.0, "power of the polynomial schedule", minimum=0.0)
    train_lr_warmup_steps: int = _param(0, "steps of linear warm-up", minimum=0)
    train_textencoder_learning_rate: float = _param(0.0, "text-encoder lr (0 = train_learning_rate)", minimum=0.0)
    train_min_timesteps: int = _param(0, "lowest training timestep", minimum=0, maximum=999)
    train_max_timesteps: int = _param(1000, "highest training timestep (exclusive)", minimum=1, maximum=1000)
    image_buckets_step: int = _param(256, "bucket size step in pixels", minimum=8)
    image_min_length: int = _param(512, "shortest bucket side in pixels", minimum=8)
    image_max_ratio: float = _param(2.0, "largest bucket aspect ratio", minimum=1.0)
    sub_image_num: int = _param(0, "extra smaller frames each image is also trained in", minimum=0)
    image_mirroring: bool = _param(False, "also train on horizontally flipped images")
    save_per_steps: int = _param(0, "also save every N steps (0 = only at the end)", minimum=0)
    save_overwrite: bool = _param(False, "allow replacing an existing file of the same name")
    save_state: bool = _param(
        False, "keep the finished run's resumable state ({name}.state) to continue it later to more train_iterations"
    )
    save_as_json: bool = _param(False, "archive the settings as JSON next to the LoRA")
    model_v_pred: bool | None = _param(
        None, "v-prediction model: auto (its yaml/scheduler config, else A1111's check of SD2 UNets), true or false",
        choices=("auto", "true", "false"), parser=parse_auto_bool,
    )
    model_use_ema: bool = _param(
        False, "use the checkpoint's EMA UNet weights instead of the trained ones, when it has them"
    )
    train_model_precision: ModelPrecision = _param(
        ModelPrecision.FP16, "precision of the frozen model; int8/fp8 store its weights in 8 bits (about half of "
        "fp16's memory) and compute in bf16 on a GPU, fp32 on the CPU"
    )
    train_lora_precision: Precision = _param(
        Precision.FP32, "precision of the trained network", parser=_parse_float_precision
    )
    save_precision: Precision = _param(Precision.FP16, "precision of the saved file", parser=_parse_float_precision)
    train_seed: int = _param(-1, "random seed (-1 = random; the seed used is recorded)", minimum=-1)
    train_snr_gamma: float = _param(5.0, "min-SNR weighting gamma (0 = off)", minimum=0.0, maximum=20.0)
    diff_save_1st_pass: bool = _param(False, "Difference: also save the copier LoRA as {name}_copy")
    diff_1st_pass_only: bool = _param(False, "Difference: train only the copier LoRA")
    diff_load_1st_pass: str = _param("", "Difference: load the copier LoRA from this file")
    use_2nd_pass_settings: bool = _param(False, "Difference: use the '2nd pass' settings for pass 2")
    logging_verbose: bool = _param(False, "print a log line per step")
    logging_save_csv: bool = _param(False, "write step, loss and lr to a CSV log")
    # --- images and captions (beyond the seed's table) ---
    image_num_multiply: int = _param(1, "repeat every image's samples this many times per epoch", minimum=1)
    image_disable_upscale: bool = _param(
        False, "never enlarge images: an image only goes to frames it covers (none left = skipped)"
    )
    image_alpha_mask: bool = _param(True, "use a transparent image's alpha as loss weight (transparent = not learned)")
    image_use_filename_as_tag: bool = _param(
        False, "caption each image with its file name (a_red_car_001.png -> 'a, red, car') instead of its caption file"
    )
    image_use_transparent_background_ajust: bool = _param(
        False, "composite transparent images onto white before encoding, not their hidden colours (alpha still masks)"
    )
    latent_cache_dir: str = _param("", "folder for cached VAE latents reused by later runs (empty = in memory only)")
    # --- networks and model families ---
    network_strength: float = _param(1.0, "multiply the saved update by this (sqrt on two factors)", minimum=0.0)
    network_resume: str = _param("", "continue training from this LoRA file (same model, type, rank, blocks)")
    # --- training options: optimizers, precision, noise, logging ---
    train_optimizer_settings: str = _param(
        "", "extra optimizer arguments, key=value per line or ';'-separated, e.g. weight_decay=0.01; betas=0.9,0.99"
    )
    train_vae_precision: Precision = _param(
        Precision.FP32, "precision of the VAE that encodes the images (fp16 can overflow)",
        parser=_parse_float_precision,
    )
    train_loss_function: LossFunction = _param(
        LossFunction.MSE, "loss between prediction and target: MSE, L1 or smooth_L1"
    )
    train_noise_offset: float = _param(
        0.0,
        "add offset x per-channel noise so very dark or bright images can be learned (0 = off)",
        minimum=0.0,
        maximum=1.0,
    )
    logging_tensorboard: bool = _param(False, "also write TensorBoard events to {output}/logs/tensorboard/{name}")
    train_nan_policy: NanPolicy = _param(
        NanPolicy.STOP, "a non-finite loss or gradient: stop (keeping the last save) or skip the step"
    )
    train_nan_skip_limit: int = _param(10, "with train_nan_policy=skip: stop after this many skipped steps", minimum=0)
    train_sync_every: int = _param(
        0, "read the loss back from the GPU every N steps, not every step: each read waits for the GPU "
        "(0 = 1 on the CPU, 10 on a GPU; skip and reduce_on_plateau read every step). The NaN guard still "
        "names the step", minimum=0,
    )
    train_estimate: bool | None = _param(
        None, "before the first step, estimate peak memory and seconds per step from a trace of the model on "
        "PyTorch's meta device (a few seconds) and warn when it exceeds the free memory: auto (on a GPU), true or "
        "false", choices=("auto", "true", "false"), parser=parse_auto_bool,
    )
    train_compile: bool = _param(
        False, "opt-in fast path: compile the denoiser's forward and backward with torch.compile (the first "
        "steps are slower while it compiles; later steps faster)"
    )
    gradient_accumulation_steps: int = _param(
        1, "sum the gradients of this many batches per optimizer step (effective batch = batch size x this)", minimum=1
    )
    train_fixed_timsteps_in_batch: bool = _param(False, "all samples of a batch share one timestep")
    train_flux_guidance: float = _param(
        1.0, "Flux.1-dev: the distilled guidance value the transformer is given while training (1.0 as kohya and "
        "ai-toolkit train; Flux.1-schnell has no guidance input and ignores it)", minimum=0.0, maximum=100.0,
    )
    # --- modes: iLECO, Difference, ADDifT, previews ---
    diff_alt_ratio: float = _param(1.0, "ADDifT: strength of the swapped (reverse) step; negative = pure noise there")
    diff_revert_original_target: bool = _param(False, "Difference/ADDifT: swap the original and target images")
    diff_use_diff_mask: bool = _param(False, "ADDifT: weight the loss by where the two images differ")
    diff_target_name: str = _param("_target", "Multi-ADDifT: suffix of the target image of X.png (X_target.png)")
    preview_prompts: str = _param("", "prompts for preview images, separated by ';' or new lines")
    preview_every_steps: int = _param(
        0, "also render previews every N steps and once before the first (0 = only at the end)", minimum=0
    )
    preview_sampling_steps: int = _param(20, "sampling steps of preview images", minimum=1, maximum=150)
    preview_guidance: float = _param(
        0.0, "guidance of preview images; 0 = the model's usual: CFG 7 on SD1/SD2/SDXL and SD3, Flux.1-dev's "
        "distilled 3.5, Z-Image 5, none on Z-Image-Turbo (a model named so) and Flux.1-schnell; 1 = no CFG",
        minimum=0.0, maximum=30.0,
    )
    gen_noise_scheduler: NoiseScheduler = _param(NoiseScheduler.DDIM, "sampler of preview images (LMS needs scipy)")
    network_train_text_encoder: bool = _param(
        False, "iLECO: also train the text encoder (BASE): the Original prompt is encoded every step with the LoRA on"
    )
    ileco_latent: ILECOLatent = _param(
        ILECOLatent.FRESH, "iLECO: the latent each step sees: fresh (a new draw every step), pool (16 drawn once, "
        "each step's batch picked from them) or once (the original: one draw reused every step)"
    )
    diff_use_fixed_noise: bool = _param(
        False, "Difference/ADDifT: one noise drawn once from the seed, reused every step, instead of fresh noise"
    )
    second_pass: dict = _param(None, "Difference: parameters that differ in pass 2", factory=dict)

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> TrainConfig:
        for f in fields(self):
            setattr(self, f.name, _coerce(f, getattr(self, f.name)))
        if self.train_min_timesteps >= self.train_max_timesteps:
            raise UserError(
                f"train_min_timesteps ({self.train_min_timesteps}) must be below "
                f"train_max_timesteps ({self.train_max_timesteps})",
                field="train_min_timesteps",
            )
        if not self.network_blocks:
            raise UserError(f"select at least one of {', '.join(ALL_BLOCK_IDS)}", field="network_blocks")
        for key in self.second_pass:
            _field_named(key)
        return self

    @property
    def output_name(self) -> str:
        return self.save_lora_name or "untitled"

    def for_second_pass(self) -> TrainConfig:
        """The settings of Difference's pass 2: the '2nd pass' overrides when they are enabled."""
        if not self.use_2nd_pass_settings or not self.second_pass:
            return self
        return dataclasses.replace(self, **{k: v for k, v in self.second_pass.items()}, second_pass={})

    def with_values(self, **values) -> TrainConfig:
        """A copy with some parameters set from user text (`--set`) or values."""
        updates = {}
        for key, value in values.items():
            f = _field_named(key)
            updates[f.name] = _coerce(f, value)
        return dataclasses.replace(self, **updates)

    # ------------------------------------------------------------------ JSON
    def to_json_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "second_pass":
                continue
            out[f.name] = value.value if isinstance(value, enum.Enum) else value
        if self.second_pass:
            out["2nd pass"] = {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in self.second_pass.items()}
        return out

    @classmethod
    def from_json_dict(cls, data: dict, *, source: str = "settings") -> TrainConfig:
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a JSON object of parameters, got {json_type(data)}")
        values = _normalise_keys(data, source)
        second = values.pop("second_pass", None)
        if second is not None:
            if not isinstance(second, dict):
                raise UserError(f"{source}: '2nd pass' must be an object of parameters, got {json_type(second)}")
            second = _normalise_keys(second, f"{source} '2nd pass'")
            second.pop("second_pass", None)
            # Only keep what really differs from pass 1; the rest is inherited.
            values["second_pass"] = second
        try:
            config = cls(**{k: _coerce(_field_named(k), v) for k, v in values.items()})
        except UserError as error:
            raise UserError(f"{error.problem} (in {source})", error.fix, field=error.field) from None
        if config.second_pass:
            base = config.to_json_dict()
            config.second_pass = {
                k: _coerce(_field_named(k), v)
                for k, v in config.second_pass.items()
                if _plain(_coerce(_field_named(k), v)) != base.get(k)
            }
        return config

    def save_json(self, path: Path) -> None:
        text = json.dumps(self.to_json_dict(), indent=2, ensure_ascii=False) + "\n"
        from traintrain.fileio import write_text_atomic

        write_text_atomic(Path(path), text)

    @classmethod
    def load_json(cls, path: Path) -> TrainConfig:
        path = Path(path)
        if path.is_dir():
            raise UserError(f"settings file {path} is a folder; give a .json file")
        if not path.is_file():
            raise UserError(f"settings file not found: {path} (give an existing .json file)")
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not valid JSON ({exc}); fix the file or use a shipped preset") from None
        except OSError as exc:
            raise UserError(f"settings file {path} cannot be read ({exc.strerror}); check its permissions") from None
        return cls.from_json_dict(data, source=str(path))


# Keys of the original extension's presets, mapped to ours, so users' old presets load.
LEGACY_KEYS = {
    "image_size(height, width)": "image_size",
    "network_blocks(BASE = TextEncoder)": "network_blocks",
    "original prompt": "original_prompt",
    "target prompt": "target_prompt",
    "negative prompt": "negative_prompt",
    "2nd pass": "second_pass",
    "vae": "model_vae",
}
# Values the original writes for "not set" (its VAE dropdown's "None"): the default here.
LEGACY_UNSET_VALUES = {"train_textencoder_learning_rate": ("",), "model_vae": ("", "None")}


def _normalise_keys(data: dict, source: str) -> dict:
    values = {}
    for key, value in data.items():
        name = LEGACY_KEYS.get(key, key)
        if value in LEGACY_UNSET_VALUES.get(name, ()):
            continue
        _field_named(name, source=source)
        values[name] = value
    return values


def _plain(value):
    return value.value if isinstance(value, enum.Enum) else value


def default_settings() -> dict:
    """Every parameter's default as `to_json_dict` gives it, read from the fields without validating a
    config: validation loads the modes (torch, diffusers), which `--help` should not wait for."""
    out = {}
    for f in fields(TrainConfig):
        if f.name != "second_pass":
            factory = f.default_factory
            default = factory() if callable(factory) else f.default
            out[f.name] = [_plain(v) for v in default] if isinstance(default, list) else _plain(default)
    return out


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def _field_named(name: str, source: str = "parameter"):
    for f in fields(TrainConfig):
        if f.name == name:
            return f
    close = difflib.get_close_matches(name, field_names(), n=1)
    fix = f"did you mean '{close[0]}'?" if close else "see the list of parameters"
    raise UserError(f"{source}: unknown parameter '{name}'", fix)


@functools.cache
def parameter_types() -> dict[str, type]:
    """Each field's real type (the annotations are strings under `from __future__ import annotations`)."""
    return typing.get_type_hints(TrainConfig)


def _coerce(f, value: Any):
    """Turn user text or JSON values into the field's type, checking range and choices."""
    name, kind, meta = f.name, parameter_types()[f.name], f.metadata
    if meta.get("parser"):
        return meta["parser"](name, value)
    if kind is str:
        return parse_text(name, value)
    if kind is bool:
        return parse_bool(name, value)
    if kind in (int, float):
        return parse_number(name, value, kind, meta)
    if kind == list[str]:
        return parse_names(name, value, meta["choices"])
    if kind == list[int]:
        return parse_image_size(name, value)
    if kind is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise UserError(f"expected an object of parameters, got {json_type(value)}", field=name)
        return {k: _coerce(_field_named(k), v) for k, v in value.items() if k != "second_pass"}
    return parse_choice(name, value, kind)
