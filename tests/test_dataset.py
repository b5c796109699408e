"""LoRA training data from a folder: image modes, captions, bad files, repeats, upscaling, alpha masks."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_components
from traintrain.config import TrainConfig
from traintrain.data.dataset import build_training_data
from traintrain.errors import UserError
from traintrain.training.events import Message


@pytest.fixture(scope="module")
def vae():
    return tiny_components().vae


def config_for(folder, **values):
    settings = dict(lora_data_directory=str(folder), image_size=[64, 64], image_buckets_step=32, image_min_length=32)
    return TrainConfig(**{**settings, **values})


def build(config, vae):
    events = []
    data = build_training_data(config, vae, 0.18215, torch.Generator().manual_seed(0), events.append)
    return data, [e for e in events if isinstance(e, Message)]


def noise_image(size=(64, 64), mode="RGB", seed=0):
    array = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


def half_transparent(size=(64, 64)):
    image = noise_image(size).convert("RGBA")
    alpha = np.full((size[1], size[0]), 255, dtype=np.uint8)
    alpha[:, : size[0] // 2] = 0
    image.putalpha(Image.fromarray(alpha))
    return image


# --- every image mode ---------------------------------------------------------------------------


def test_every_image_mode_becomes_a_sample(vae, tmp_path):
    noise_image(mode="L").save(tmp_path / "gray.png")
    half_transparent().convert("LA").save(tmp_path / "gray_alpha.png")
    noise_image(mode="P").save(tmp_path / "palette.gif")
    half_transparent().save(tmp_path / "rgba.png")
    noise_image(mode="CMYK").save(tmp_path / "cmyk.jpg")
    sixteen = (np.random.default_rng(1).integers(0, 65535, (64, 64))).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    data, messages = build(config_for(tmp_path), vae)
    assert not [m for m in messages if m.level == "warning"]
    assert sorted(data.assignment.frames_by_image) == [
        "cmyk.jpg", "gray.png", "gray_alpha.png", "palette.gif", "rgba.png", "sixteen.png"
    ]
    assert len(data.samples) == 6 and all(s.latent.shape == (4, 8, 8) for s in data.samples)
    assert all(torch.isfinite(s.latent).all() for s in data.samples)
    with_mask = [s for s in data.samples if s.mask is not None]
    assert len(with_mask) == 2  # LA and RGBA


# --- captions -----------------------------------------------------------------------------------


def test_caption_rules(vae, tmp_path):
    for name in ["a", "b", "c", "d"]:
        noise_image().save(tmp_path / f"{name}.png")
    (tmp_path / "a.txt").write_text("from txt", encoding="utf-8")
    (tmp_path / "a.caption").write_text("from caption", encoding="utf-8")
    (tmp_path / "b.caption").write_bytes("\ufeffcaf\u00e9, smile".encode("utf-8"))
    long_caption = ", ".join(f"tag {i}" for i in range(60))
    (tmp_path / "c.txt").write_text(long_caption, encoding="utf-8")
    data, _ = build(config_for(tmp_path, lora_trigger_word="sks"), vae)
    captions = {s.caption for s in data.samples}
    assert captions == {"sks, from txt", "sks, caf\u00e9, smile", f"sks, {long_caption}", "sks"}
    assert data.tag_frequency["sks"] == 4 and data.tag_frequency["caf\u00e9"] == 1


def test_caption_that_is_not_utf8_names_the_file(vae, tmp_path):
    noise_image().save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(UserError, match=f"caption file {tmp_path / 'a.txt'} is not UTF-8"):
        build(config_for(tmp_path), vae)


# --- bad images ---------------------------------------------------------------------------------


def png_bytes():
    buffer = io.BytesIO()
    noise_image().save(buffer, "PNG")
    return buffer.getvalue()


BAD_FILES = {
    "empty.png": b"",
    "truncated.png": png_bytes()[:200],
    "corrupt.png": png_bytes()[:60] + bytes(range(256)) * 8,
    "notes.jpg": b"not a picture\n" * 20,
}


def test_bad_images_are_reported_and_skipped(vae, tmp_path):
    noise_image().save(tmp_path / "good.png")
    for name, content in BAD_FILES.items():
        (tmp_path / name).write_bytes(content)
    data, messages = build(config_for(tmp_path), vae)
    assert list(data.assignment.frames_by_image) == ["good.png"] and len(data.samples) == 1
    assert sorted(data.skipped) == sorted(str(tmp_path / name) for name in BAD_FILES)
    warnings = [m.text for m in messages if m.level == "warning"]
    for name in BAD_FILES:
        assert any(str(tmp_path / name) in text for text in warnings), name


def test_folder_without_a_usable_image_is_an_error(vae, tmp_path):
    for name, content in BAD_FILES.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match="no usable image in"):
        build(config_for(tmp_path), vae)


# --- repeats and upscaling ----------------------------------------------------------------------


def test_image_num_multiply_repeats_every_sample(vae, tmp_path):
    noise_image().save(tmp_path / "a.png")
    noise_image((96, 64)).save(tmp_path / "b.png")
    data, _ = build(config_for(tmp_path, image_num_multiply=3, image_mirroring=True), vae)
    assert len(data.samples) == 12 == data.assignment.total_samples
    assert sum(s.frame == (64, 64) for s in data.samples) == 6
    assert data.tag_frequency == {}  # no captions; repeats do not count tags twice either


def test_disable_upscale_keeps_only_frames_an_image_covers(vae, tmp_path):
    noise_image((48, 48)).save(tmp_path / "small.png")
    noise_image((80, 80)).save(tmp_path / "big.png")
    config = config_for(tmp_path, sub_image_num=1)
    upscaled, _ = build(config, vae)
    assert len(upscaled.samples) == 4
    data, messages = build(config.with_values(image_disable_upscale=True), vae)
    assert data.assignment.frames_by_image == {"big.png": [(64, 64), (32, 32)], "small.png": [(32, 32)]}
    assert len(data.samples) == 3


def test_disable_upscale_reports_an_image_smaller_than_every_frame(vae, tmp_path):
    noise_image((20, 20)).save(tmp_path / "tiny.png")
    noise_image((64, 64)).save(tmp_path / "fits.png")
    data, messages = build(config_for(tmp_path, image_disable_upscale=True), vae)
    assert [s.frame for s in data.samples] == [(64, 64)]
    assert any("tiny.png (20x20) is smaller than its frames" in m.text for m in messages if m.level == "warning")
    (tmp_path / "fits.png").unlink()
    with pytest.raises(UserError, match="every image is smaller than its frames"):
        build(config_for(tmp_path, image_disable_upscale=True), vae)


# --- alpha mask ---------------------------------------------------------------------------------


def test_alpha_becomes_the_loss_mask_mirrored_with_the_image(vae, tmp_path):
    half_transparent().save(tmp_path / "cut.png")
    data, _ = build(config_for(tmp_path, image_mirroring=True), vae)
    plain, mirrored = data.samples
    assert plain.mask.shape == (1, 8, 8)
    assert torch.all(plain.mask[..., :4] == 0) and torch.all(plain.mask[..., 4:] == 1)
    assert torch.equal(mirrored.mask, plain.mask.flip(-1))


def test_alpha_mask_can_be_turned_off(vae, tmp_path):
    half_transparent().save(tmp_path / "cut.png")
    data, _ = build(config_for(tmp_path, image_alpha_mask=False), vae)
    assert data.samples[0].mask is None


# --- a real training run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_with_mask(tmp_path_factory):
    """Two steps of LoRA training on a transparent image, a captioned image and a broken file."""
    from traintrain.jobs.runner import run_job
    from traintrain.models.tiny import write_tiny_model
    from traintrain.modes import lora

    root = tmp_path_factory.mktemp("run")
    images = root / "images"
    images.mkdir()
    half_transparent().save(images / "cut.png")
    noise_image(seed=3).save(images / "plain.png")
    (images / "plain.txt").write_text("red ball, Smile", encoding="utf-8")
    (images / "broken.png").write_bytes(png_bytes()[:200])
    model = write_tiny_model("sd1", "single-file", root / "tiny.safetensors")
    config = TrainConfig(
        model=str(model), lora_data_directory=str(images), lora_trigger_word="sks", network_rank=2,
        train_iterations=2, train_batch_size=2, image_size=[64, 64], image_buckets_step=64, image_min_length=64,
        train_model_precision="fp32", save_precision="fp32", train_seed=1, save_lora_name="masked",
    )
    masks = []
    original = lora.image_step_loss

    def spy(components, scheduler, latents, conditioning, config, generator, mask=None, **options):
        masks.append(mask)
        return original(components, scheduler, latents, conditioning, config, generator, mask, **options)

    events = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lora, "image_step_loss", spy)
        result = run_job(config, output_dir=root / "out", report=events.append)
    return result, events, masks, images


def test_alpha_mask_reaches_the_loss(trained_with_mask):
    _, _, masks, _ = trained_with_mask
    assert len(masks) == 2 and all(m is not None and m.shape == (2, 1, 8, 8) for m in masks)
    # One sample of each batch is the transparent image: its left half weighs nothing.
    for mask in masks:
        assert sorted(float(m[..., :4].sum()) for m in mask) == [0.0, 32.0]


def test_broken_image_is_a_warning_naming_it_during_training(trained_with_mask):
    _, events, _, images = trained_with_mask
    warnings = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert any(str(images / "broken.png") in text for text in warnings)


def test_plan_summary_is_printed_without_per_image_lines(trained_with_mask):
    _, events, _, _ = trained_with_mask
    texts = [e.text for e in events if isinstance(e, Message)]
    assert "max frames (width x height): 64x64" in texts
    assert "training samples: 2 (2 images)" in texts
    assert "images:" not in texts


def test_tag_frequency_is_in_the_saved_metadata(trained_with_mask):
    from traintrain.networks.kohya_format import load_lora

    result, _, _, _ = trained_with_mask
    _, meta = load_lora(result.path)
    frequency = json.loads(meta["ss_tag_frequency"])
    assert list(frequency.values()) == [{"sks": 2, "red ball": 1, "smile": 1}]  # kohya: {folder: {tag: count}}
    assert meta["ss_num_train_images"] == "2"


def test_filename_as_tag_and_white_background_reach_the_samples(vae, tmp_path):
    """image_use_filename_as_tag captions from the file name; the transparent background option changes the latent."""
    half_transparent().save(tmp_path / "red_fox_(1).png")
    (tmp_path / "red_fox_(1).txt").write_text("a caption", encoding="utf-8")
    plain, _ = build(config_for(tmp_path, lora_trigger_word="tt"), vae)
    tagged, _ = build(config_for(tmp_path, lora_trigger_word="tt", image_use_filename_as_tag=True,
                                 image_use_transparent_background_ajust=True), vae)
    assert plain.samples[0].caption == "tt, a caption"
    assert tagged.samples[0].caption == "tt, red, fox"
    assert tagged.tag_frequency == {"tt": 1, "red": 1, "fox": 1}
    assert not torch.equal(plain.samples[0].latent, tagged.samples[0].latent)  # white, not the hidden noise
    assert torch.equal(plain.samples[0].mask, tagged.samples[0].mask)
