"""Tiny CLIP tokenizer, the offline tokenizer search order, and tokenizers built from CLIP's vocabulary."""

import importlib.util
import json
import shutil

import pytest

from traintrain.errors import UserError
from traintrain.models import tokenizers as tokenizers_module
from traintrain.models.encoding import chunk_token_ids, encode_prompts
from traintrain.models.families import SD_FAMILIES, Family
from traintrain.models.loading import load_model
from traintrain.models.tiny import tiny_text_encoder, build_tiny_components, write_tiny_model
from traintrain.models.tokenizers import (
    build_clip_tokenizers,
    build_tiny_tokenizer,
    check_vocab_fits,
    find_clip_vocabulary,
    find_tokenizers,
    save_tokenizer,
)
from traintrain.training.events import Message

BOS_ID, EOS_ID = 49406, 49407
PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "MASTERPIECE, Best Quality, 1girl, (red hair:1.2), [blue eyes], looking at viewer!!",
    "3.14159 and 2024-01-13 at 10:30pm, 100% sure; #42 @home",
    "it's the dog's toy... they're here?! we'll see, I'd say",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9, \u00dcber stra\u00dfe \u00c6\u00d8\u00c5",
    "\u6771\u4eac\u306e\u591c\u666f, \u732b \U0001f431\U0001f3a8 \u00bd \u2122",
    "  several   spaces\tand\nnew lines  ",
    "sks_style, by greg-rutkowski | trending on artstation; 8k uhd",
    "",
]
LONG_PROMPT = ", ".join(f"word{n} red dog" for n in range(40))  # well over 77 tokens


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path, monkeypatch):
    """Never see the developer's real cache; each test decides what the cache holds."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def no_clip_vocabulary(monkeypatch):
    """As on a machine without clip-anytorch."""
    monkeypatch.setattr(tokenizers_module, "find_clip_vocabulary", lambda: None)


def clip_vocabulary():
    vocabulary = find_clip_vocabulary()
    assert vocabulary is not None, "clip-anytorch is not installed; run make install"
    return vocabulary


def reference_tokenizer():
    """CLIP's own SimpleTokenizer, loaded from its file: importing the `clip` package would need torchvision."""
    path = clip_vocabulary().with_name("simple_tokenizer.py")
    spec = importlib.util.spec_from_file_location("clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer(str(clip_vocabulary()))


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


def test_a_tokenizer_json_this_tokenizers_cannot_read_falls_back_to_vocab_and_merges(tmp_path):
    """As a folder saved by a newer `tokenizers` reads in A1111's environment (transformers 4.30)."""
    folder = save_to(tmp_path / "tok")
    newer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    newer["model"]["type"] = "FutureBPE"  # tokenizers: "data did not match any variant of untagged enum"
    (folder / "tokenizer.json").write_text(json.dumps(newer), encoding="utf-8")
    [loaded] = find_tokenizers(Family.SD1, tmp_path / "model.safetensors", tokenizer_dir=folder)
    assert loaded("a red dog, in style").input_ids == build_tiny_tokenizer()("a red dog, in style").input_ids
    (folder / "merges.txt").unlink()
    with pytest.raises(UserError, match="cannot read the tokenizer"):
        find_tokenizers(Family.SD1, tmp_path / "model.safetensors", tokenizer_dir=folder)


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


def test_sdxl_with_only_one_cached_tokenizer_is_refused(tmp_path, no_clip_vocabulary):
    cache_repo(tmp_path / "hf-cache", "openai/clip-vit-large-patch14")
    with pytest.raises(UserError, match="laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"):
        find_tokenizers(Family.SDXL, tmp_path / "m.safetensors")


def test_missing_tokenizer_says_what_to_provide(tmp_path, no_clip_vocabulary):
    with pytest.raises(UserError) as error:
        find_tokenizers(Family.SD1, tmp_path / "m.safetensors")
    message = str(error.value)
    assert error.value.field == "tokenizer_dir" and "give a tokenizer folder" in message
    assert "vocab.json and merges.txt" in message
    assert str(tmp_path / "m.tokenizer") in message and "openai/clip-vit-large-patch14" in message
    assert "install clip-anytorch" in message
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


# ---- tokenizers built from CLIP's vocabulary (clip-anytorch) ------------------------------------


def test_clip_vocabulary_is_found_without_importing_the_package():
    import sys

    assert clip_vocabulary().name == "bpe_simple_vocab_16e6.txt.gz"
    assert "clip" not in sys.modules


@pytest.mark.parametrize("family", SD_FAMILIES)
def test_built_tokenizers_match_clips_own_tokenizer(family):
    reference = reference_tokenizer()
    assert build_clip_tokenizers(Family.SD1, clip_vocabulary())[0]("a photo of a cat").input_ids == [
        49406, 320, 1125, 539, 320, 2368, 49407]
    for tokenizer in build_clip_tokenizers(family, clip_vocabulary()):
        assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
        assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|startoftext|>", BOS_ID)
        assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|endoftext|>", EOS_ID)
        for prompt in PROMPTS + [LONG_PROMPT]:
            if tokenizer.pad_token == "!" and "!" in prompt:
                continue  # see test_exclamation_marks_as_the_real_files_give_them
            assert tokenizer(prompt).input_ids == [BOS_ID, *reference.encode(prompt), EOS_ID], prompt


def test_exclamation_marks_as_the_real_files_give_them():
    """SD2's and SDXL's second tokenizer files pad with "!", which makes each "!" a token of its own
    (diffusers issue 4153 shows these ids from stabilityai/stable-diffusion-xl-base-0.9 tokenizer_2)."""
    first, second = build_clip_tokenizers(Family.SDXL, clip_vocabulary())
    assert first("! !! !!!").input_ids == [BOS_ID, 256, 748, 995, EOS_ID] == [BOS_ID, *reference_tokenizer().encode("! !! !!!"), EOS_ID]
    assert second("! !! !!!").input_ids == [BOS_ID, 0, 0, 0, 0, 0, 0, EOS_ID]


def test_built_tokenizer_matches_its_files_loaded_back(tmp_path):
    """The in-memory tokenizer and the classic vocab.json + merges.txt layout give the same ids."""
    built = build_clip_tokenizers(Family.SD2, clip_vocabulary())[0]
    save_tokenizer(built, tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer.json").unlink()
    [loaded] = find_tokenizers(Family.SD2, tmp_path / "m.safetensors", tokenizer_dir=tmp_path / "tok")
    assert len(loaded) == 49408
    for prompt in PROMPTS + [LONG_PROMPT]:
        assert loaded(prompt).input_ids == built(prompt).input_ids, prompt


@pytest.mark.parametrize(("family", "pads"), [(Family.SD1, [EOS_ID]), (Family.SD2, [0]), (Family.SDXL, [EOS_ID, 0])])
def test_padding_and_truncation_to_77_per_family(family, pads):
    tokenizers = build_clip_tokenizers(family, clip_vocabulary())
    assert [t.pad_token_id for t in tokenizers] == pads
    assert [t.pad_token for t in tokenizers] == ["<|endoftext|>" if p == EOS_ID else "!" for p in pads]
    long_ids = [BOS_ID, *reference_tokenizer().encode(LONG_PROMPT), EOS_ID]
    assert len(long_ids) > 77
    for tokenizer, pad in zip(tokenizers, pads):
        short = tokenizer("a photo of a cat", padding="max_length", truncation=True, max_length=77).input_ids
        assert short == [49406, 320, 1125, 539, 320, 2368, 49407] + [pad] * 70
        cut = tokenizer(LONG_PROMPT, padding="max_length", truncation=True, max_length=77).input_ids
        assert cut == long_ids[:76] + [EOS_ID]
        chunks = chunk_token_ids(tokenizer, LONG_PROMPT)  # A1111 chunks: nothing is cut
        assert all(len(chunk) == 77 and chunk[0] == BOS_ID for chunk in chunks)
        assert [i for chunk in chunks for i in chunk[1:76]][: len(long_ids) - 2] == long_ids[1:-1]
        assert chunks[-1][-1] == pad


def test_vocabulary_is_the_last_resort_and_says_so(tmp_path):
    events = []
    found = find_tokenizers(Family.SDXL, tmp_path / "m.safetensors", report=events.append)
    assert [t.pad_token_id for t in found] == [EOS_ID, 0]
    assert [type(e) for e in events] == [Message] and "bpe_simple_vocab_16e6.txt.gz" in events[0].text
    assert "\n" not in events[0].text and "--" not in events[0].text
    save_to(tmp_path / "m.tokenizer")
    events.clear()
    [found] = find_tokenizers(Family.SD1, tmp_path / "m.safetensors", report=events.append)
    assert found.name_or_path == str(tmp_path / "m.tokenizer") and events == []


def test_a_named_folder_without_tokenizer_is_still_refused(tmp_path):
    with pytest.raises(UserError, match="no tokenizer there"):
        find_tokenizers(Family.SD1, tmp_path / "m.safetensors", tokenizer_dir=tmp_path)


def write_bare_checkpoint(family, path):
    """A tiny single file whose text encoders have CLIP's 49408 embedding rows, with no tokenizer beside it."""
    tokenizers = build_clip_tokenizers(family, clip_vocabulary())
    components = build_tiny_components(family)
    components.text_encoders = [tiny_text_encoder(family, i, t) for i, t in enumerate(tokenizers)]
    components.tokenizers = tokenizers
    write_tiny_model(family, "single-file", path, components=components)
    shutil.rmtree(path.with_name(path.stem + ".tokenizer"))
    return path


@pytest.mark.parametrize("family", SD_FAMILIES)
def test_bare_checkpoint_loads_and_encodes_end_to_end(tmp_path, family):
    path = write_bare_checkpoint(family, tmp_path / "bare.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["bare.safetensors"]  # no tokenizer folder, no cache
    events = []
    loaded = load_model(path, report=events.append)
    assert loaded.family is family and len(loaded.tokenizers) == len(loaded.text_encoders)
    assert [t.pad_token_id for t in loaded.tokenizers] == [t.pad_token_id for t in build_clip_tokenizers(family, clip_vocabulary())]
    assert [e.text for e in events if "CLIP" in e.text]
    conditioning = encode_prompts(loaded, ["a photo of a cat", LONG_PROMPT])
    assert conditioning.hidden.shape[:2] == (2, 77 * len(chunk_token_ids(loaded.tokenizers[0], LONG_PROMPT)))
    assert (conditioning.pooled is not None) == (family is Family.SDXL)


def test_tiny_vocabulary_model_without_tokenizer_is_refused_clearly(tmp_path):
    """CLIP's vocabulary has 49408 tokens: a model with fewer embedding rows needs its own tokenizer."""
    path = write_tiny_model(Family.SD1, "single-file", tmp_path / "tiny.safetensors")
    shutil.rmtree(tmp_path / "tiny.tokenizer")
    with pytest.raises(UserError, match=r"bpe_simple_vocab_16e6.txt.gz has 49408 tokens but the text encoder has only \d+ embedding rows"):
        load_model(path)
