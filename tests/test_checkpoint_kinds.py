"""Files that are not plain text-to-image checkpoints are refused in one line; fp8 and EMA checkpoints load."""

import math
import shutil

import pytest
import torch
from safetensors.torch import save_file

from job_helpers import tiny_job
from sample_images import write_demo_images
from traintrain.cli import main
from traintrain.errors import UserError
from traintrain.jobs.runner import run_job
from traintrain.models.checkpoint_kinds import checkpoint_family, transformer_file_family
from traintrain.models.families import FLUX_MARKERS, SD3_MARKERS, SD_FAMILIES, ZIMAGE_MARKERS, Family
from traintrain.models.ldm_convert import UNET_PREFIX, VAE_PREFIX, components_to_ldm, unet_to_ldm
from traintrain.models.loading import load_model, read_weight_shapes
from traintrain.models.tiny import build_tiny_components, write_tiny_model
from traintrain.training.events import Message

FIRST_CONV = UNET_PREFIX + "input_blocks.0.0.weight"


@pytest.fixture(scope="module")
def ldm_states():
    return {family: components_to_ldm(build_tiny_components(family)) for family in SD_FAMILIES}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    write_demo_images(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """The tokenizer folder of each tiny family, to put beside a hand-made checkpoint."""
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        family: write_tiny_model(family, "single-file", root / f"{family.value}.safetensors").with_suffix(".tokenizer")
        for family in (Family.SD1, Family.SDXL)
    }


def save(state, path):
    if path.suffix == ".safetensors":
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 1}, path)
    return path


def widened_input(state, channels):
    """The UNet's first conv taking `channels` inputs, as inpainting / pix2pix / depth fine-tunes have."""
    weight = state[FIRST_CONV]
    extra = torch.zeros(weight.shape[0], channels - weight.shape[1], *weight.shape[2:])
    return state | {FIRST_CONV: torch.cat([weight, extra], dim=1)}


def refiner_shaped(state):
    """SDXL's conditioner with CLIP-L dropped and OpenCLIP-bigG at slot 0, as the refiner stores it."""
    return {
        key.replace("conditioner.embedders.1.model.", "conditioner.embedders.0.model."): value
        for key, value in state.items()
        if not key.startswith("conditioner.embedders.0.transformer.")
    }


def kohya_lora(_):
    down, up = torch.zeros(2, 32), torch.zeros(32, 2)
    name = "lora_unet_input_blocks_1_1_proj_in"
    return {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(2.0),
            "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 64)}


def peft_lora(_):
    return {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(2, 32),
            "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.zeros(32, 2)}


def loha(_):
    return {f"lora_unet_input_blocks_1_1_proj_in.hada_w{i}_{ab}": torch.zeros(2, 32) for i in (1, 2) for ab in "ab"}


def vae_alone(state, keep_prefix):
    return {
        (key if keep_prefix else key.removeprefix(VAE_PREFIX)): value
        for key, value in state.items()
        if key.startswith(VAE_PREFIX)
    }


def unet_alone(state):
    return {key: value for key, value in state.items() if key.startswith(UNET_PREFIX)}


# (name, family, file suffix, how to make it from the tiny model's LDM state, what the one line must say)
KINDS = [
    ("inpainting", Family.SD1, ".safetensors", lambda s: widened_input(s, 9), "inpainting model"),
    ("inpainting-ckpt", Family.SD1, ".ckpt", lambda s: widened_input(s, 9), "inpainting model"),
    ("sdxl-inpainting", Family.SDXL, ".safetensors", lambda s: widened_input(s, 9), "inpainting model"),
    ("pix2pix", Family.SD1, ".safetensors", lambda s: widened_input(s, 8), "instruct-pix2pix model"),
    ("depth", Family.SD2, ".safetensors",
     lambda s: widened_input(s, 5) | {"depth_model.scratch.output_conv.0.weight": torch.zeros(2, 2)},
     "depth-conditioned model"),
    ("odd-channels", Family.SD1, ".safetensors", lambda s: widened_input(s, 7), "takes 7 input channels"),
    ("refiner", Family.SDXL, ".safetensors", refiner_shaped, "SDXL refiner"),
    ("kohya-lora", Family.SD1, ".safetensors", kohya_lora, "LoRA/LyCORIS network"),
    ("peft-lora", Family.SD1, ".safetensors", peft_lora, "LoRA/LyCORIS network"),
    ("loha", Family.SD1, ".safetensors", loha, "LoRA/LyCORIS network"),
    ("vae", Family.SD1, ".safetensors", lambda s: vae_alone(s, keep_prefix=False), "VAE alone"),
    ("vae-prefixed", Family.SD1, ".ckpt", lambda s: vae_alone(s, keep_prefix=True), "VAE alone"),
    ("embedding", Family.SD1, ".safetensors", lambda s: {"emb_params": torch.zeros(2, 64)}, "textual-inversion"),
    ("sdxl-embedding", Family.SDXL, ".safetensors",
     lambda s: {"clip_l": torch.zeros(2, 64), "clip_g": torch.zeros(2, 96)}, "textual-inversion"),
    ("unet-only", Family.SD1, ".safetensors", unet_alone, "holds only the UNet (no text encoder, no VAE)"),
    ("sdxl-unet-only", Family.SDXL, ".safetensors", unet_alone,
     "holds only the UNet (no CLIP-L text encoder, no OpenCLIP-bigG text encoder, no VAE)"),
    ("text-encoder-and-vae", Family.SD1, ".safetensors",
     lambda s: {k: v for k, v in s.items() if not k.startswith(UNET_PREFIX)},
     "holds only the text encoder and VAE (no UNet)"),
]


@pytest.mark.parametrize(("name", "family", "suffix", "make", "says"), KINDS, ids=[kind[0] for kind in KINDS])
def test_odd_model_is_refused_in_one_line_before_anything_is_written(
    capsys, tmp_path, ldm_states, images, name, family, suffix, make, says
):
    path = save(make(dict(ldm_states[family])), tmp_path / f"{name}{suffix}")
    output = tmp_path / "output"
    code = main(["train", "--model", str(path), "--data", str(images), "--output-dir", str(output)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert says in lines[0] and str(path) in lines[0] and "--model" in lines[0]
    assert not output.exists() or not any(output.iterdir())


@pytest.mark.parametrize("name", ["inpainting-ckpt", "refiner", "kohya-lora", "vae", "unet-only"])
def test_the_full_load_refuses_the_same_way_as_the_headers(tmp_path, ldm_states, name):
    _, family, suffix, make, says = next(kind for kind in KINDS if kind[0] == name)
    path = save(make(dict(ldm_states[family])), tmp_path / f"{name}{suffix}")
    with pytest.raises(UserError) as from_headers:
        read_weight_shapes(path)
    with pytest.raises(UserError) as from_load:
        load_model(path)
    assert says in from_load.value.message and from_load.value.message == from_headers.value.message
    assert from_load.value.field == "model"


def test_a1111_pt_embedding_is_refused(tmp_path):
    path = tmp_path / "style.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.zeros(2, 768)}, "name": "style",
                "step": 1000}, path)
    for read in (read_weight_shapes, load_model):
        with pytest.raises(UserError, match="textual-inversion embedding"):
            read(path)


def test_refiner_recognised_by_its_unet_alone(tmp_path, ldm_states):
    """A refiner UNet's added-condition input (2560) tells it apart even without its text encoder."""
    shapes = {key: tuple(value.shape) for key, value in ldm_states[Family.SDXL].items()}
    label = UNET_PREFIX + "label_emb.0.0.weight"
    shapes[label] = (shapes[label][0], 2560)
    with pytest.raises(UserError, match="SDXL refiner"):
        checkpoint_family(tmp_path / "refiner_unet.safetensors", shapes)
    shapes[label] = (shapes[label][0], 2816)
    assert checkpoint_family(tmp_path / "base.safetensors", shapes) is Family.SDXL


# ---- fp8-stored checkpoints ---------------------------------------------------------------------


def fp8_checkpoint(state, tokenizer_folder, path, dtype=torch.float8_e4m3fn):
    """UNet and text-encoder weights stored in fp8 (UNet norms kept in fp16, as some exporters do)."""
    stored = {}
    for key, value in state.items():
        if key.startswith(UNET_PREFIX) and ".norm" in key:
            stored[key] = value.to(torch.float16)
        elif not key.startswith(VAE_PREFIX):
            stored[key] = value.to(dtype)
        else:
            stored[key] = value
    save(stored, path)
    shutil.copytree(tokenizer_folder, path.with_suffix(".tokenizer"))
    return stored


@pytest.mark.parametrize(
    ("family", "dtype"),
    [(Family.SD1, torch.float8_e4m3fn), (Family.SD1, torch.float8_e5m2), (Family.SDXL, torch.float8_e4m3fn)],
)
def test_fp8_checkpoint_loads_upcast(tmp_path, ldm_states, tokenizers, family, dtype):
    path = tmp_path / "fp8.safetensors"
    stored = fp8_checkpoint(ldm_states[family], tokenizers[family], path, dtype)
    assert read_weight_shapes(path).family is family
    loaded = load_model(path)
    for model in (loaded.unet, loaded.vae, *loaded.text_encoders):
        assert {p.dtype for p in model.parameters()} == {torch.float32}
    reloaded = components_to_ldm(loaded)
    assert reloaded.keys() == stored.keys()
    differing = [key for key in stored if not torch.equal(reloaded[key], stored[key].float())]
    assert not differing, differing[:5]
    assert any(value.dtype == dtype for value in stored.values())
    assert not all(torch.equal(ldm_states[family][key], stored[key].float()) for key in stored)  # fp8 rounded


@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL])
def test_fp8_checkpoint_trains(tmp_path, ldm_states, tokenizers, family):
    path = tmp_path / "fp8.safetensors"
    fp8_checkpoint(ldm_states[family], tokenizers[family], path)
    result = run_job(tiny_job(tmp_path, model=str(path), train_iterations=2), output_dir=tmp_path / "out")
    assert result.path.is_file() and result.losses and all(math.isfinite(loss) for loss in result.losses)


# ---- EMA weights --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ema_checkpoint(tmp_path_factory, ldm_states, tokenizers):
    """A Lightning-style .ckpt whose EMA UNet (another seed's) differs from its trained one."""
    path = tmp_path_factory.mktemp("ema") / "ema.ckpt"
    ema_unet = build_tiny_components(Family.SD1, seed=1).unet
    ema = unet_to_ldm(ema_unet.state_dict(), ema_unet.config)
    state = dict(ldm_states[Family.SD1])
    state |= {"model_ema." + "".join(key.split(".")[1:]): value for key, value in ema.items()}
    state |= {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1000)}
    save(state, path)
    shutil.copytree(tokenizers[Family.SD1], path.with_suffix(".tokenizer"))
    return path, ema


def loaded_unet_ldm(components):
    return unet_to_ldm(components.unet.state_dict(), components.unet.config)


def test_ema_checkpoint_trains_on_the_non_ema_weights_by_default(ema_checkpoint, ldm_states):
    path, ema = ema_checkpoint
    messages = []
    loaded = load_model(path, report=messages.append)
    unet = loaded_unet_ldm(loaded)
    assert torch.equal(unet[FIRST_CONV], ldm_states[Family.SD1][FIRST_CONV])
    assert not torch.equal(unet[FIRST_CONV], ema[FIRST_CONV])
    said = "the checkpoint has EMA weights; training on the non-EMA ones (model_use_ema picks the EMA ones)"
    assert Message(said) in messages
    assert read_weight_shapes(path).family is Family.SD1


def test_model_use_ema_picks_the_ema_weights(ema_checkpoint):
    path, ema = ema_checkpoint
    messages = []
    unet = loaded_unet_ldm(load_model(path, use_ema=True, report=messages.append))
    assert unet.keys() == ema.keys()
    assert all(torch.equal(unet[key], ema[key]) for key in ema)
    assert any("training on the EMA UNet" in m.text for m in messages if isinstance(m, Message))


def test_model_use_ema_without_ema_weights_is_refused(tmp_path):
    config = tiny_job(tmp_path, model_use_ema=True)
    with pytest.raises(UserError, match="has no EMA weights") as error:
        run_job(config, output_dir=tmp_path / "out")
    assert error.value.field == "model_use_ema"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("family", [Family.FLUX, Family.SD3, Family.ZIMAGE])
@pytest.mark.parametrize("prefix", ["", UNET_PREFIX])
def test_transformer_files_are_told_by_their_reference_keys(tmp_path, family, prefix):
    """Flux, SD3 and Z-Image transformer files (bare or under ComfyUI's prefix) are models of their family, not
    refused as UNet-less checkpoints; their loaders find the parts they lack (models/*_loading.py)."""
    markers = {Family.FLUX: FLUX_MARKERS, Family.SD3: SD3_MARKERS, Family.ZIMAGE: ZIMAGE_MARKERS}[family]
    shapes = {prefix + key: (2, 2) for key in markers}
    assert transformer_file_family(shapes) is family
    assert checkpoint_family(tmp_path / "model.safetensors", shapes) is family
    assert transformer_file_family({FIRST_CONV: (320, 4, 3, 3)}) is None
