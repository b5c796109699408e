"""Offline loading of single files and diffusers folders, and the one-line errors users see."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from traintrain.errors import UserError
from traintrain.models.families import SD_FAMILIES, Family
from traintrain.models import tokenizers as tokenizer_lookup
from traintrain.models.ldm_convert import components_to_ldm
from traintrain.models.loading import load_model
from traintrain.models.tiny import build_tiny_components, write_tiny_model
from traintrain.models.tokenizers import build_tiny_tokenizer, save_tokenizer

FORMATS = {"single-file": "tiny.safetensors", "diffusers": "tiny"}


class Callback:
    """Stands in for the Lightning objects that make real .ckpt files need unsafe pickle."""


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Tiny models of every family in both formats, written once for the module."""
    root = tmp_path_factory.mktemp("models")
    return {(family, fmt): write_tiny_model(family, fmt, root / family.value / name) for family in SD_FAMILIES for fmt, name in FORMATS.items()}


def assert_same_weights(expected, loaded):
    for name in ("unet", "vae"):
        assert_equal_state(getattr(expected, name).state_dict(), getattr(loaded, name).state_dict())
    assert len(loaded.text_encoders) == len(expected.text_encoders)
    for want, got in zip(expected.text_encoders, loaded.text_encoders):
        assert type(got) is type(want)
        assert_equal_state(want.state_dict(), got.state_dict())


def assert_equal_state(want, got):
    assert want.keys() == got.keys()
    differing = [key for key in want if not torch.equal(want[key], got[key])]
    assert not differing, differing[:5]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", SD_FAMILIES)
def test_tiny_model_loads_back_bit_identical(written, family, fmt):
    loaded = load_model(written[family, fmt])
    assert loaded.family is family and loaded.v_prediction is False
    assert_same_weights(build_tiny_components(family), loaded)
    assert len(loaded.tokenizers) == len(loaded.text_encoders)
    assert loaded.source == str(written[family, fmt])


@pytest.mark.parametrize("family", SD_FAMILIES)
def test_single_file_model_computes_the_same(written, family):
    """Head counts are not in the file; the template rules must rebuild the same attention."""
    expected, loaded = build_tiny_components(family), load_model(written[family, "single-file"])
    context = torch.randn(1, 77, expected.unet.config.cross_attention_dim)
    extra = {}
    if family is Family.SDXL:
        pooled = expected.text_encoders[1].config.projection_dim
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pooled), "time_ids": torch.rand(1, 6) * 128}}
    sample = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        want = expected.unet(sample, torch.tensor([300]), context, **extra).sample
        got = loaded.unet(sample, torch.tensor([300]), context, **extra).sample
        ids = loaded.tokenizers[-1]("a photo of the dog", return_tensors="pt").input_ids
        want_text = expected.text_encoders[-1](ids)[0]
        got_text = loaded.text_encoders[-1](ids)[0]
    # Same weights, other memory layout: BLAS may round differently; a wrong head count would not be close.
    assert torch.allclose(want, got, atol=1e-5) and torch.allclose(want_text, got_text, atol=1e-5)


def test_ckpt_with_state_dict_loads(tmp_path, written):
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(written[Family.SD1, "single-file"]), "global_step": 10}, ckpt)
    loaded = load_model(ckpt, tokenizer_dir=written[Family.SD1, "single-file"].with_name("tiny.tokenizer"))
    assert_same_weights(build_tiny_components(Family.SD1), loaded)


def test_ckpt_needing_unsafe_pickle_is_refused(tmp_path):
    ckpt = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "callbacks": Callback()}, ckpt)
    with pytest.raises(UserError, match="unsafe pickle.*use a .safetensors version"):
        load_model(ckpt)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_file_is_refused(tmp_path, written, suffix):
    source = written[Family.SD1, "single-file"]
    if suffix == ".ckpt":
        source = tmp_path / "full.ckpt"
        torch.save(load_file(written[Family.SD1, "single-file"]), source)
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(UserError, match=f"{broken}: truncated or corrupt.*again"):
        load_model(broken)


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        load_model(tmp_path / "nope.safetensors")


def test_folder_that_is_not_diffusers(tmp_path):
    with pytest.raises(UserError, match="not a diffusers model"):
        load_model(tmp_path)


def test_not_stable_diffusion(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(UserError, match="not a Stable Diffusion checkpoint"):
        load_model(path)


def test_lora_instead_of_model(tmp_path):
    path = tmp_path / "style.safetensors"
    save_file({"lora_unet_conv_in.lora_down.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(UserError, match="this is a LoRA"):
        load_model(path)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    with pytest.raises(UserError, match="unsupported model file type"):
        load_model(path)


def test_incomplete_unet_is_refused(tmp_path, written):
    state = components_to_ldm(build_tiny_components(Family.SD1))
    del state["model.diffusion_model.output_blocks.3.1.proj_out.weight"]
    path = tmp_path / "cut.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, path)
    tokenizer_dir = written[Family.SD1, "single-file"].with_name("tiny.tokenizer")
    with pytest.raises(UserError, match="UNet weights do not fit"):
        load_model(path, tokenizer_dir=tokenizer_dir)


def test_single_file_without_tokenizer_says_what_to_provide(tmp_path, written, monkeypatch):
    monkeypatch.setattr(tokenizer_lookup, "find_clip_vocabulary", lambda: None)  # as without clip-anytorch
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(written[Family.SD2, "single-file"].read_bytes())
    with pytest.raises(UserError, match=r"no sd2 tokenizer found offline; give a tokenizer folder"):
        load_model(lone)


def test_tokenizer_too_big_for_the_encoder(tmp_path, written):
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(["<new-token>"])
    save_tokenizer(tokenizer, tmp_path / "big")
    with pytest.raises(UserError, match="embedding rows"):
        load_model(written[Family.SD1, "diffusers"], tokenizer_dir=tmp_path / "big")


def test_v_prediction_from_yaml_beside_the_file(tmp_path, written):
    path = tmp_path / "v.safetensors"
    path.write_bytes(written[Family.SD2, "single-file"].read_bytes())
    (tmp_path / "v.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    tokenizer_dir = written[Family.SD2, "single-file"].with_name("tiny.tokenizer")
    assert load_model(path, tokenizer_dir=tokenizer_dir).v_prediction is True
    assert load_model(path, tokenizer_dir=tokenizer_dir, v_prediction=False).v_prediction is False


def test_v_prediction_from_diffusers_scheduler(tmp_path):
    folder = write_tiny_model(Family.SD2, "diffusers", tmp_path / "v")
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"epsilon"', '"v_prediction"'))
    assert load_model(folder).v_prediction is True


def test_dtype(written):
    loaded = load_model(written[Family.SD1, "single-file"], dtype=torch.float16)
    assert {p.dtype for model in (loaded.unet, loaded.vae, *loaded.text_encoders) for p in model.parameters()} == {torch.float16}


def test_v_prediction_from_a_marker_key_in_the_checkpoint(tmp_path, written):
    from safetensors.torch import load_file, save_file

    source = written[Family.SDXL, "single-file"]
    state = load_file(str(source))
    state["v_pred"] = torch.tensor([])
    path = tmp_path / "vpred.safetensors"
    save_file(state, str(path))
    tokenizer_dir = source.with_name("tiny.tokenizer")
    assert load_model(path, tokenizer_dir=tokenizer_dir).v_prediction is True
    assert load_model(source).v_prediction is False
