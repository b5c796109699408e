"""Tiny CLIP tokenizer and the offline tokenizer search order."""

import pytest

from traintrain.errors import UserError
from traintrain.models.families import Family
from traintrain.models.tiny import build_tiny_components
from traintrain.models.tokenizers import build_tiny_tokenizer, check_vocab_fits, find_tokenizers, save_tokenizer


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path, monkeypatch):
    """Never see the developer's real cache; each test decides what the cache holds."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def save_to(folder):
    save_tokenizer(build_tiny_tokenizer(), folder)
    return folder


def cache_repo(cache, repo, subfolder=""):
    """Lay out a repo snapshot the way huggingface_hub does."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0123abcd")
    return save_to(repo_dir / "snapshots" / "0123abcd" / subfolder)


def test_tiny_tokenizer_is_a_real_clip_bpe():
    tokenizer = build_tiny_tokenizer()
    ids = tokenizer("A photo of the cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and tokenizer.model_max_length == 77
    assert ids[0] == tokenizer.bos_token_id and ids[6] == tokenizer.eos_token_id == tokenizer.pad_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:6]) == ["a</w>", "photo</w>", "of</w>", "the</w>", "cat</w>"]
    assert tokenizer.eos_token_id == len(tokenizer) - 1  # as in CLIP, EOS is the highest id
    assert tokenizer("zq").input_ids[1:-1] == tokenizer.convert_tokens_to_ids(["z", "q</w>"])


def test_saved_tokenizer_loads_back_from_vocab_and_merges_alone(tmp_path):
    folder = save_to(tmp_path / "tok")
    (folder / "tokenizer.json").unlink()
    [loaded] = find_tokenizers(Family.SD1, tmp_path / "model.safetensors", tokenizer_dir=folder)
    assert loaded("a red dog, in style").input_ids == build_tiny_tokenizer()("a red dog, in style").input_ids
    assert loaded.model_max_length == 77


def test_user_folder_beats_model_folder_and_cache(tmp_path):
    model = tmp_path / "model"
    save_to(model / "tokenizer")
    cache_repo(tmp_path / "hf-cache", "openai/clip-vit-large-patch14")
    user = save_to(tmp_path / "mine")
    [found] = find_tokenizers(Family.SD1, model, tokenizer_dir=user)
    assert found.name_or_path == str(user)


def test_model_folder_beats_cache(tmp_path):
    model = tmp_path / "model"
    save_to(model / "tokenizer")
    cache_repo(tmp_path / "hf-cache", "openai/clip-vit-large-patch14")
    [found] = find_tokenizers(Family.SD1, model)
    assert found.name_or_path == str(model / "tokenizer")


def test_single_file_uses_the_tokenizer_folder_beside_it(tmp_path):
    save_to(tmp_path / "m.tokenizer" / "tokenizer")
    save_to(tmp_path / "m.tokenizer" / "tokenizer_2")
    found = find_tokenizers(Family.SDXL, tmp_path / "m.safetensors")
    assert [t.name_or_path for t in found] == [str(tmp_path / "m.tokenizer" / s) for s in ("tokenizer", "tokenizer_2")]


def test_hf_cache_found_through_hf_home(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    folder = cache_repo(tmp_path / "home" / "hub", "stabilityai/stable-diffusion-2-1", "tokenizer")
    [found] = find_tokenizers(Family.SD2, tmp_path / "m.safetensors")
    assert found.name_or_path == str(folder)


def test_sdxl_takes_each_tokenizer_from_its_own_repo(tmp_path):
    first = cache_repo(tmp_path / "hf-cache", "openai/clip-vit-large-patch14")
    second = cache_repo(tmp_path / "hf-cache", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k")
    found = find_tokenizers(Family.SDXL, tmp_path / "m.safetensors")
    assert [t.name_or_path for t in found] == [str(first), str(second)]


def test_sdxl_with_only_one_cached_tokenizer_is_refused(tmp_path):
    cache_repo(tmp_path / "hf-cache", "openai/clip-vit-large-patch14")
    with pytest.raises(UserError, match="laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"):
        find_tokenizers(Family.SDXL, tmp_path / "m.safetensors")


def test_missing_tokenizer_says_what_to_provide(tmp_path):
    with pytest.raises(UserError) as error:
        find_tokenizers(Family.SD1, tmp_path / "m.safetensors")
    message = str(error.value)
    assert "--tokenizer DIR" in message and "vocab.json and merges.txt" in message
    assert str(tmp_path / "m.tokenizer") in message and "openai/clip-vit-large-patch14" in message
    assert "\n" not in message


def test_user_folder_without_tokenizer_is_refused(tmp_path):
    with pytest.raises(UserError, match="no tokenizer there"):
        find_tokenizers(Family.SD1, tmp_path / "m.safetensors", tokenizer_dir=tmp_path)


def test_vocab_larger_than_embedding_table_is_refused():
    components = build_tiny_components(Family.SD1)
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(["<extra-token>"])
    check_vocab_fits(components.tokenizers, components.text_encoders)
    with pytest.raises(UserError, match="embedding rows"):
        check_vocab_fits([tokenizer], components.text_encoders)
