"""The on-disk latent cache: a second run on the same images reuses latents and skips the VAE."""

import copy

import pytest
import torch
from PIL import Image

from helpers import tiny_components
from traintrain.config import TrainConfig
from traintrain.data.dataset import build_training_data
from traintrain.data.latent_cache import LatentCache, file_digest, vae_fingerprint
from traintrain.errors import UserError
from traintrain.training.events import Message


@pytest.fixture(scope="module")
def vae():
    return tiny_components().vae


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "a.png")
    Image.new("RGB", (96, 64), (30, 200, 30)).save(folder / "b.jpg")
    return folder


def small_config(images, cache, **values):
    settings = dict(
        lora_data_directory=str(images), image_size=[64, 64], image_buckets_step=32, image_min_length=32,
        sub_image_num=1, image_mirroring=True, latent_cache_dir=str(cache),
    )
    return TrainConfig(**{**settings, **values})


class CountingEncoder:
    """Wraps `vae.encode` to count calls, then restores it."""

    def __init__(self, vae, monkeypatch):
        self.calls = 0
        original = vae.encode

        def encode(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(vae, "encode", encode)


def build(config, vae, seed=5):
    events = []
    data = build_training_data(config, vae, 0.18215, torch.Generator().manual_seed(seed), events.append)
    return data, [e.text for e in events if isinstance(e, Message)]


def test_second_run_hits_the_cache_and_skips_the_vae(vae, images, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    config = small_config(images, cache)
    first, first_messages = build(config, vae)
    counter = CountingEncoder(vae, monkeypatch)
    second, messages = build(config, vae)
    assert counter.calls == 0
    entries = len(first.samples)  # 2 images x 2 frames x (image, mirror)
    assert entries == 8 and len(list(cache.glob("*.safetensors"))) == entries
    assert f"latent cache {cache}: 0 reused, {entries} encoded" in first_messages
    assert f"latent cache {cache}: {entries} reused, 0 encoded" in messages
    for a, b in zip(first.samples, second.samples):
        assert torch.equal(a.latent, b.latent) and a.frame == b.frame


def test_cached_run_equals_an_uncached_run(vae, images, tmp_path):
    config = small_config(images, tmp_path / "cache")
    build(config, vae)
    cached, _ = build(config, vae)
    plain, _ = build(config.with_values(latent_cache_dir=""), vae)
    for a, b in zip(cached.samples, plain.samples):
        torch.testing.assert_close(a.latent, b.latent)
    assert not list(tmp_path.glob("**/*.tmp"))


def test_a_changed_image_is_encoded_again(vae, images, tmp_path, monkeypatch):
    config = small_config(images, tmp_path / "cache", image_mirroring=False, sub_image_num=0)
    build(config, vae)
    Image.new("RGB", (64, 64), (0, 0, 255)).save(images / "a.png")
    counter = CountingEncoder(vae, monkeypatch)
    _, messages = build(config, vae)
    assert counter.calls == 1
    assert any("1 reused, 1 encoded" in m for m in messages)


def test_a_corrupt_entry_is_replaced(vae, images, tmp_path):
    cache = tmp_path / "cache"
    config = small_config(images, cache, image_mirroring=False, sub_image_num=0)
    build(config, vae)
    for entry in cache.glob("*.safetensors"):
        entry.write_bytes(b"garbage")
    _, messages = build(config, vae)
    assert any("0 reused, 2 encoded" in m for m in messages)
    _, messages = build(config, vae)
    assert any("2 reused, 0 encoded" in m for m in messages)


def test_key_depends_on_content_frame_mirroring_and_vae(vae, images, tmp_path):
    cache = LatentCache.for_vae(tmp_path / "cache", vae)
    digest = file_digest(images / "a.png")
    keys = {
        cache.key(digest, (64, 64), False), cache.key(digest, (64, 64), True),
        cache.key(digest, (32, 64), False), cache.key(file_digest(images / "b.jpg"), (64, 64), False),
    }
    assert len(keys) == 4
    assert cache.key(digest, (64, 64), False) == LatentCache.for_vae(tmp_path / "other", vae).key(digest, (64, 64), False)


def test_vae_fingerprint_sees_weights_and_dtype():
    vae = tiny_components().vae
    before = vae_fingerprint(vae)
    assert vae_fingerprint(vae) == before
    assert vae_fingerprint(copy.deepcopy(vae).to(torch.bfloat16)) != before
    weight = vae.encoder.conv_in.weight
    kept = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0, 0, 0] += 1
    assert vae_fingerprint(vae) != before
    with torch.no_grad():
        weight.copy_(kept)
        vae.decoder.conv_out.weight.zero_()  # the decoder does not shape latents
    assert vae_fingerprint(vae) == before


def test_cache_folder_that_cannot_be_made_is_a_user_error(vae, images, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="latent_cache_dir .* cannot be created"):
        build(small_config(images, blocker / "cache"), vae)
