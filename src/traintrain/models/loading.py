"""Load a Stable Diffusion model offline: A1111 single files (`.safetensors`, `.ckpt`) or diffusers folders.

A single file carries no config, so the architecture's dimensions are read from tensor shapes and
filled into the family's bundled config template (ComfyUI's approach): real checkpoints and the tiny
test models load through the same path. Every failure is a one-line UserError.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import accelerate
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors import SafetensorError
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, PreTrainedModel

from traintrain.errors import UserError
from traintrain.models.checkpoint_kinds import checkpoint_family, choose_unet_weights, no_ema_weights, tensor_shapes
from traintrain.models.checkpoint_reading import first_line, read_checkpoint, safetensors_shapes, torch_load
from traintrain.models.components import ModelComponents
from traintrain.models.families import TRANSFORMER_FAMILIES, Family
from traintrain.models.ldm_convert import TEXT_ENCODER_PREFIXES, UNET_PREFIX, VAE_PREFIX
from traintrain.models.prediction import PredictionChoice, choose_prediction, declared_prediction
from traintrain.models.tokenizers import check_vocab_fits, find_tokenizers
from traintrain.training.events import Reporter, ignore

CONFIG_ROOT = Path(__file__).parent / "configs"
TEXT_ENCODER_FOLDERS = ("text_encoder", "text_encoder_2")


def load_model(path, *, tokenizer_dir=None, v_prediction: bool | None = None, dtype=torch.float32,
               use_ema: bool = False, report: Reporter = ignore) -> ModelComponents:
    """UNet, VAE, text encoder(s) and tokenizer(s) of the model at `path`, never touching the network.

    `v_prediction`: an explicit value wins; else a `v_pred` marker key in the checkpoint, the diffusers
    scheduler config or a `X.yaml` beside the checkpoint decides; else SD2 UNets are probed as A1111
    does (models/prediction.py); else epsilon. `components.prediction` says which and why.
    `report` gets a Message when the tokenizers are built from CLIP's vocabulary, and one saying which
    UNet weights a checkpoint with EMA weights gave (`use_ema`: the EMA ones; see checkpoint_kinds).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; check the model path", field="model")
    transformer_family = _transformer_family(path)
    components = _load_transformer_family(transformer_family, path, tokenizer_dir, report, use_ema) if (
        transformer_family) else None
    if components is None:
        load = _load_diffusers_folder if path.is_dir() else _load_single_file
        components = load(path, tokenizer_dir, report, use_ema)
    check_vocab_fits(components.tokenizers, components.text_encoders)
    for model in (components.denoiser, components.vae, *components.text_encoders):
        if any(p.dtype != dtype for p in model.parameters()):  # diffusers warns about any cast, even a no-op one
            model.to(dtype)
        model.eval()
    if components.spec.flow_matching:  # neither epsilon nor v: no choice to make
        components.prediction = PredictionChoice(
            False, f"{components.family.value} models train on the flow-matching objective")
        return components
    components.prediction = choose_prediction(components, components.prediction, v_prediction)
    components.v_prediction = components.prediction.v_prediction
    return components


def _transformer_family(path: Path) -> Family | None:
    """Flux, SD3 or Z-Image, from the pipeline a folder names or the keys of a single file; None for the UNet
    families."""
    from traintrain.models.checkpoint_kinds import transformer_file_family
    from traintrain.models.flux_loading import is_flux_folder
    from traintrain.models.sd3_loading import is_sd3_folder
    from traintrain.models.zimage_loading import is_zimage_folder

    if path.is_dir():
        if is_zimage_folder(path):
            return Family.ZIMAGE
        return Family.FLUX if is_flux_folder(path) else Family.SD3 if is_sd3_folder(path) else None
    shapes = safetensors_shapes(path) if path.suffix.lower() == ".safetensors" else {}
    return transformer_file_family(shapes)


def _load_transformer_family(family: Family, path: Path, tokenizer_dir, report: Reporter,
                             use_ema: bool) -> ModelComponents:
    from traintrain.models.flux_loading import load_flux_folder, load_flux_single_file
    from traintrain.models.sd3_loading import load_sd3_folder, load_sd3_single_file

    if use_ema:  # Flux, SD3 and Z-Image files hold one set of transformer weights
        raise no_ema_weights(path)
    if family is Family.ZIMAGE:
        from traintrain.models.zimage_loading import load_zimage

        return load_zimage(path, tokenizer_dir, report)
    if family is Family.SD3:
        return (load_sd3_folder if path.is_dir() else load_sd3_single_file)(path, tokenizer_dir, report)
    return (load_flux_folder if path.is_dir() else load_flux_single_file)(path, tokenizer_dir, report)


def config_template(family: Family, component: str) -> dict:
    """The bundled config JSON of a family's component (`unet`, `vae`, `text_encoder`, `scheduler`, ...)."""
    name = "scheduler_config.json" if component.startswith("scheduler") else "config.json"
    return json.loads((CONFIG_ROOT / family.value / component / name).read_text())


def unet_attention_heads(family: Family, channels) -> int | list[int]:
    """Head counts a file cannot store: SD1 uses 8 heads everywhere, SD2/SDXL heads of 64 channels."""
    if family is Family.SD1:
        return config_template(family, "unet")["attention_head_dim"]
    return [max(1, c // 64) for c in channels]


def text_encoder_heads(hidden_size: int) -> int:
    """CLIP-L, OpenCLIP-H and bigG all use 64-wide heads; tiny encoders get one head."""
    return max(1, hidden_size // 64)


@dataclass
class WeightShapes:
    """What a model file's headers tell before any weight is read."""

    family: Family
    unet: list[tuple[int, ...]]
    text_encoders: list[tuple[int, ...]]


def read_weight_shapes(path) -> WeightShapes:
    """Family and UNet / text-encoder weight shapes from headers only (pickles memory-mapped).

    A missing, broken, unsafe or foreign model is refused in a second instead of after minutes of
    loading, and the shapes bound the size of the files the run will save.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; check the model path", field="model")
    if path.is_dir():
        check_diffusers_folder(path)
        family = _family_from_folder(path)
        folders = [path / name for name in TEXT_ENCODER_FOLDERS if (path / name).is_dir()]
        denoiser = path / ("transformer" if family in TRANSFORMER_FAMILIES else "unet")
        return WeightShapes(family, _folder_shapes(denoiser), [s for f in folders for s in _folder_shapes(f)])
    if path.suffix.lower() == ".safetensors":
        shapes = safetensors_shapes(path)
    else:
        shapes = {key: tuple(value.shape) for key, value in torch_load(path, mmap=True).items()}
    family = checkpoint_family(path, shapes)
    if family in TRANSFORMER_FAMILIES:  # text encoders and VAE may be separate files; a LoRA trains the transformer
        from traintrain.models.flux_loading import TRANSFORMER_ROOTS as FLUX_ROOTS
        from traintrain.models.sd3_loading import TRANSFORMER_ROOTS as SD3_ROOTS
        from traintrain.models.zimage_keys import TRANSFORMER_ROOTS as ZIMAGE_ROOTS

        roots = {Family.FLUX: FLUX_ROOTS, Family.SD3: SD3_ROOTS, Family.ZIMAGE: ZIMAGE_ROOTS}[family]
        transformer = [shape for key, shape in shapes.items() if key.removeprefix(UNET_PREFIX).startswith(roots)]
        return WeightShapes(family, transformer, [])
    return WeightShapes(
        family,
        [shape for key, shape in shapes.items() if key.startswith(UNET_PREFIX)],
        [shape for key, shape in shapes.items() if key.startswith(TEXT_ENCODER_PREFIXES[family])],
    )


def _folder_shapes(folder: Path) -> list[tuple[int, ...]]:
    return [shape for file in sorted(folder.glob("*.safetensors")) for shape in safetensors_shapes(file).values()]


# ---- single files -------------------------------------------------------------------------------


def _load_single_file(path: Path, tokenizer_dir, report: Reporter, use_ema: bool) -> ModelComponents:
    state = read_checkpoint(path)
    family = checkpoint_family(path, tensor_shapes(state))
    state = choose_unet_weights(path, state, use_ema, report)
    tokenizers = find_tokenizers(family, path, tokenizer_dir, report)
    try:
        encoder_configs = _text_encoder_configs_from_ldm(family, state, tokenizers)
        unet_config = unet_config_from_ldm(family, state, encoder_configs)
        vae_config = vae_config_from_ldm(family, state)
    except (KeyError, IndexError, ValueError, StopIteration) as error:
        raise UserError(
            f"{path}: {family.value} checkpoint with missing or odd weights ({error}); "
            "the file is incomplete or not supported",
            field="model",
        ) from error
    unet = assemble(
        UNet2DConditionModel.from_config,
        unet_config,
        lambda m: convert_ldm_unet_checkpoint(state, unet_config),
        path,
        "UNet",
    )
    vae = assemble(
        AutoencoderKL.from_config, vae_config, lambda m: convert_ldm_vae_checkpoint(state, vae_config), path, "VAE"
    )
    text_encoders = [
        assemble(
            build_text_encoder,
            config,
            lambda m, i=index: _convert_text_encoder(family, i, state, m),
            path,
            "text encoder",
        )
        for index, config in enumerate(encoder_configs)
    ]
    return ModelComponents(
        family, unet, vae, text_encoders, tokenizers, prediction=declared_prediction(path, state.keys()),
        source=str(path),
    )


def unet_config_from_ldm(family: Family, state, encoder_configs) -> dict:
    """UNet config: the family template with channels, depth and attention layout read from the weights."""
    unet = _under(state, UNET_PREFIX)
    levels = 1 + sum(1 for key in unet if re.fullmatch(r"input_blocks\.\d+\.0\.op\.weight", key))
    input_blocks = 1 + max(int(key.split(".")[1]) for key in unet if key.startswith("input_blocks."))
    per_block = (input_blocks - levels) // levels
    first_blocks = [1 + level * (per_block + 1) for level in range(levels)]
    channels = [unet[f"input_blocks.{block}.0.out_layers.3.weight"].shape[0] for block in first_blocks]
    depths = [_count(unet, f"input_blocks.{block}.1.transformer_blocks.") for block in first_blocks]
    mid_depth = _count(unet, "middle_block.1.transformer_blocks.")
    attention = next(key for key in unet if key.endswith(".proj_in.weight"))
    cross_key = next(key for key in unet if key.endswith("attn2.to_k.weight"))
    config = config_template(family, "unet") | {
        "in_channels": unet["input_blocks.0.0.weight"].shape[1],
        "out_channels": unet["out.2.weight"].shape[0],
        "block_out_channels": channels,
        "layers_per_block": per_block,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        "transformer_layers_per_block": [d or 1 for d in depths[:-1]] + [depths[-1] or mid_depth],
        "cross_attention_dim": unet[cross_key].shape[1],
        "use_linear_projection": unet[attention].ndim == 2,
        "attention_head_dim": unet_attention_heads(family, channels),
    }
    if family is Family.SDXL:
        extra_inputs = unet["label_emb.0.0.weight"].shape[1]
        pooled = encoder_configs[-1]["projection_dim"]
        config |= {
            "projection_class_embeddings_input_dim": extra_inputs,
            "addition_time_embed_dim": (extra_inputs - pooled) // 6,
        }
    return config


def vae_config_from_ldm(family: Family, state) -> dict:
    """VAE config: the family template with levels, channels and latent size read from the weights."""
    vae = _under(state, VAE_PREFIX)
    levels = len({key.split(".")[2] for key in vae if key.startswith("encoder.down.")})
    return config_template(family, "vae") | {
        "in_channels": vae["encoder.conv_in.weight"].shape[1],
        "out_channels": vae["decoder.conv_out.weight"].shape[0],
        "latent_channels": vae["decoder.conv_in.weight"].shape[1],
        "block_out_channels": [vae[f"encoder.down.{level}.block.0.conv2.weight"].shape[0] for level in range(levels)],
        "layers_per_block": _count(vae, "encoder.down.0.block."),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
    }


def _text_encoder_configs_from_ldm(family: Family, state, tokenizers) -> list[dict]:
    """Text encoder config(s): templates with width, depth and vocabulary read from the weights."""
    configs = []
    folders = TEXT_ENCODER_FOLDERS[: len(TEXT_ENCODER_PREFIXES[family])]
    for prefix, folder, tokenizer in zip(TEXT_ENCODER_PREFIXES[family], folders, tokenizers, strict=False):
        weights = _under(state, prefix)
        if prefix.endswith(".transformer."):
            embedding = weights["text_model.embeddings.token_embedding.weight"]
            positions = weights["text_model.embeddings.position_embedding.weight"].shape[0]
            layers = _count(weights, "text_model.encoder.layers.")
            intermediate = weights["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
        else:
            embedding = weights["token_embedding.weight"]
            positions = weights["positional_embedding"].shape[0]
            # diffusers drops SD2's last OpenCLIP layer: SD2 conditions on the penultimate one.
            layers = _count(weights, "transformer.resblocks.") - (family is Family.SD2)
            intermediate = weights["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        config = config_template(family, folder) | {
            "vocab_size": embedding.shape[0],
            "hidden_size": embedding.shape[1],
            "num_attention_heads": text_encoder_heads(embedding.shape[1]),
            "num_hidden_layers": layers,
            "intermediate_size": intermediate,
            "max_position_embeddings": positions,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if "text_projection" in weights and family is Family.SDXL:
            config["projection_dim"] = weights["text_projection"].shape[1]
        configs.append(config)
    return configs


def build_text_encoder(config: dict):
    """The transformers class the config names (SDXL's second encoder has a projection), randomly initialised."""
    cls = CLIPTextModelWithProjection if config["architectures"] == ["CLIPTextModelWithProjection"] else CLIPTextModel
    return cls(CLIPTextConfig.from_dict(config))


def _convert_text_encoder(family: Family, index: int, state, model) -> dict:
    """LDM text-encoder weights in the model's own key names, via diffusers' converters."""
    prefix = TEXT_ENCODER_PREFIXES[family][index]
    if prefix.endswith(".transformer."):
        converted = convert_ldm_clip_checkpoint(_under(state, prefix, keep_prefix=True))
    else:
        converted = convert_open_clip_checkpoint(model, _open_clip_weights(family, state, prefix), prefix=prefix)
    if not hasattr(model, "text_model"):  # transformers 5 flattened CLIPTextModel
        converted = {key.removeprefix("text_model."): value for key, value in converted.items()}
    weights = {key: value for key, value in converted.items() if not key.endswith("position_ids")}
    # transformers < 4.31 (A1111 pins 4.30) keeps position_ids as a saved buffer: adopt the model's own.
    weights.update({key: value for key, value in model.state_dict().items() if key.endswith("position_ids")})
    return weights


def _open_clip_weights(family: Family, state, prefix: str) -> dict:
    """OpenCLIP weights to convert; for SD2 without the unused last layer and projection."""
    weights = _under(state, prefix, keep_prefix=True)
    if family is not Family.SD2:
        return weights
    last = _count(weights, prefix + "transformer.resblocks.") - 1
    unused = (f"{prefix}transformer.resblocks.{last}.", f"{prefix}text_projection")
    return {key: value for key, value in weights.items() if not key.startswith(unused)}


def assemble(build, config: dict, convert, path: Path, what: str):
    """Build the model without allocating weights, then adopt the converted tensors, strictly."""
    with accelerate.init_empty_weights():
        model = build(config)
    try:
        model.load_state_dict(convert(model), strict=True, assign=True)
    except (RuntimeError, KeyError, ValueError) as error:
        raise UserError(
            f"{path}: the {what} weights do not fit a {_architecture_name(config)} model ({first_line(error)}); "
            "the file is incomplete or an unsupported variant",
            field="model",
        ) from error
    return model


def _architecture_name(config: dict) -> str:
    """A short architecture name for messages."""
    return config.get("_class_name") or config.get("architectures", ["model"])[0]


# ---- diffusers folders --------------------------------------------------------------------------


def check_diffusers_folder(path: Path) -> None:
    denoiser = "unet"
    if (path / "model_index.json").is_file() and (path / "transformer").is_dir():
        denoiser = "transformer"  # Flux, SD3 (is_flux_folder / is_sd3_folder name the pipeline class)
    if not (path / "model_index.json").is_file() or not (path / denoiser / "config.json").is_file():
        raise UserError(
            f"{path}: folder is not a diffusers model (no model_index.json with {denoiser}/); "
            "give a diffusers model folder or a .safetensors/.ckpt file",
            field="model",
        )


def _load_diffusers_folder(path: Path, tokenizer_dir, report: Reporter, use_ema: bool) -> ModelComponents:
    check_diffusers_folder(path)
    if use_ema:  # diffusers folders hold one UNet
        raise no_ema_weights(path)
    family = _family_from_folder(path)
    unet = load_pretrained(UNet2DConditionModel, path, "unet")
    vae = load_pretrained(AutoencoderKL, path, "vae")
    classes = (CLIPTextModel, CLIPTextModelWithProjection) if family is Family.SDXL else (CLIPTextModel,)
    text_encoders = [
        load_pretrained(cls, path, folder) for cls, folder in zip(classes, TEXT_ENCODER_FOLDERS, strict=False)
    ]
    tokenizers = find_tokenizers(family, path, tokenizer_dir, report)
    return ModelComponents(
        family, unet, vae, text_encoders, tokenizers, prediction=declared_prediction(path), source=str(path)
    )


def _family_from_folder(path: Path) -> Family:
    """Flux names its pipeline; SDXL has a second text encoder; SD2's OpenCLIP encoder uses gelu where SD1's
    CLIP-L uses quick_gelu."""
    from traintrain.models.flux_loading import is_flux_folder
    from traintrain.models.sd3_loading import is_sd3_folder
    from traintrain.models.zimage_loading import is_zimage_folder

    if is_flux_folder(path):
        return Family.FLUX
    if is_sd3_folder(path):
        return Family.SD3
    if is_zimage_folder(path):
        return Family.ZIMAGE
    if (path / "text_encoder_2").is_dir():
        return Family.SDXL
    encoder_config = path / "text_encoder" / "config.json"
    if not encoder_config.is_file():
        raise UserError(
            f"{path}: diffusers folder without text_encoder/config.json; give a complete SD1/SD2/SDXL model folder",
            field="model",
        )
    return Family.SD2 if json.loads(encoder_config.read_text()).get("hidden_act") == "gelu" else Family.SD1


def load_pretrained(cls, path: Path, subfolder: str):
    """One part of a diffusers folder (`path/subfolder`), offline; a broken one is a one-line UserError."""
    try:
        if issubclass(cls, PreTrainedModel):  # transformers' text encoders: CLIP, T5
            return cls.from_pretrained(str(path / subfolder), local_files_only=True)
        return cls.from_pretrained(
            str(path), subfolder=subfolder, local_files_only=True, variant=_variant(path / subfolder)
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise UserError(
            f"{path / subfolder}: cannot load the weights ({first_line(error)}); the folder is incomplete or corrupt",
            field="model",
        ) from error


def _variant(folder: Path) -> str | None:
    """diffusers only finds `*.fp16.safetensors` when asked for that variant."""
    has_plain = any(folder.glob("diffusion_pytorch_model.safetensors")) or any(
        folder.glob("diffusion_pytorch_model.bin")
    )
    return "fp16" if not has_plain and any(folder.glob("*.fp16.safetensors")) else None


# ---- shared helpers -----------------------------------------------------------------------------


def _under(state, prefix: str, keep_prefix: bool = False) -> dict:
    return {
        (key if keep_prefix else key[len(prefix) :]): value for key, value in state.items() if key.startswith(prefix)
    }


def _count(weights, prefix: str) -> int:
    """How many numbered children `prefix{n}.` exist (layers, resnets, transformer blocks)."""
    return len({key[len(prefix) :].split(".")[0] for key in weights if key.startswith(prefix)})
