"""CLIP tokenizers: a tiny in-memory one for tests and demos, and an offline search for real ones.

Tokenizer files are small but not part of a single-file checkpoint, and we never reach the network,
so they come from a folder the user names, the model's own folder, or the local Hugging Face cache;
failing those, from the CLIP BPE vocabulary that ships inside the `clip` package (clip-anytorch).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import cast

from transformers import CLIPTokenizer, CLIPTokenizerFast  # type: ignore[attr-defined]  # 5.x: lazy alias

try:
    from transformers.convert_slow_tokenizer import bytes_to_unicode
except ImportError:  # older transformers (A1111 pins 4.30) keep it beside the slow CLIP tokenizer only
    from transformers.models.clip.tokenization_clip import bytes_to_unicode  # type: ignore[attr-defined,no-redef]

from traintrain.errors import TOKENIZER_DIR, UserError
from traintrain.models.families import Family
from traintrain.training.events import Message, Reporter, ignore

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77

# Words the tiny tokenizer knows as whole tokens, so test prompts give short, realistic ids.
TINY_WORDS = ("a", "photo", "of", "the", "cat", "dog", "girl", "man", "style", "red", "blue", "in")

# Hugging Face repos (and subfolder) holding each family's tokenizers, in order of preference.
HF_TOKENIZER_REPOS: dict[Family, list[list[tuple[str, str]]]] = {
    Family.SD1: [[("openai/clip-vit-large-patch14", ""), ("runwayml/stable-diffusion-v1-5", "tokenizer")]],
    Family.SD2: [[("stabilityai/stable-diffusion-2-1", "tokenizer"), ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "")]],
    Family.SDXL: [
        [("openai/clip-vit-large-patch14", ""), ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer")],
        [("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2"), ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "")],
    ],
}
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")

# CLIP's BPE vocabulary, shared by SD1, SD2 and SDXL; packages that ship it, in order of preference.
CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_PACKAGES = ("clip", "open_clip")  # clip-anytorch / openai-clip, open_clip_torch
CLIP_VOCAB_SIZE = 49408  # 256 bytes, their end-of-word forms, 48894 merges, BOS, EOS
# The padding token of each text encoder's tokenizer: OpenCLIP-trained ones (SD2, SDXL's second) pad with "!"
# (id 0); as with their real tokenizer files, a "!" in a prompt then becomes id 0 too (diffusers issue 4153).
CLIP_PAD_TOKENS = {Family.SD1: [EOS], Family.SD2: ["!"], Family.SDXL: [EOS, "!"]}


def build_tiny_tokenizer(words: tuple[str, ...] = TINY_WORDS) -> CLIPTokenizer:
    """A real byte-level BPE CLIP tokenizer with a vocabulary of a few hundred entries: one token per
    word of `words`, any other word in byte pieces.

    Layout follows CLIP's: 256 byte symbols, their end-of-word forms, merge results, then BOS/EOS
    (so EOS has the highest id, as in the real vocabulary).
    """
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
                tokens.append(pair[0] + pair[1])
            pieces[:2] = [pair[0] + pair[1]]
    tokens = list(dict.fromkeys(tokens)) + [BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    return _from_vocabulary(vocab, merges, "", pad_token=EOS)


def save_tokenizer(tokenizer: CLIPTokenizer, folder) -> None:
    """Save in both layouts tools read: tokenizer.json and the classic vocab.json + merges.txt.

    The files are written in place: give a fresh folder (write_tiny_model gives a temporary one).
    """
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    # In id order, as CLIP's own vocab.json: get_vocab()'s order changes from run to run, the file must not.
    vocab = dict(sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    # tokenizers < 0.21 (transformers 4.x) stores each merge as one "a b" string, later ones as a pair.
    lines = "".join((pair if isinstance(pair, str) else " ".join(pair)) + "\n" for pair in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + lines, encoding="utf-8")


def find_tokenizers(family: Family, model_path, tokenizer_dir=None, report: Reporter = ignore) -> list[CLIPTokenizer]:
    """The family's tokenizer(s) (two for SDXL), found offline, or a UserError saying what to provide.

    Order: the user-named folder, the model's folder (diffusers `tokenizer/`, or `X.tokenizer/` beside
    a single file `X.safetensors`), the local Hugging Face cache, then tokenizers built from the CLIP
    vocabulary of an installed `clip` package (reported as a Message).
    """
    count = 2 if family is Family.SDXL else 1
    if tokenizer_dir is not None:
        found = _from_folder(Path(tokenizer_dir), count)
        if found is None:
            raise UserError(
                f"{tokenizer_dir}: no tokenizer there",
                "choose a tokenizer folder with vocab.json and merges.txt"
                f"{' (or tokenizer/ and tokenizer_2/ subfolders)' if count == 2 else ''}", field=TOKENIZER_DIR,
            )
        return found
    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.with_name(model_path.stem + ".tokenizer")
    found = _from_folder(folder, count) if folder.is_dir() else None
    if found is None:
        found = _from_hf_cache(family)
    if found is None and (vocabulary := find_clip_vocabulary()) is not None:
        found = build_clip_tokenizers(family, vocabulary)
        report(Message(f"no {family.value} tokenizer beside the model or in the Hugging Face cache; "
                       f"built its tokenizer{'s' if count == 2 else ''} from CLIP's vocabulary in {vocabulary}"))
    if found is None:
        raise UserError(_missing_message(family, model_path, folder), field=TOKENIZER_DIR)
    return found


def find_clip_vocabulary() -> Path | None:
    """CLIP's BPE vocabulary file inside an installed package, located without importing it."""
    for package in CLIP_VOCAB_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            if (Path(location) / CLIP_VOCAB_FILE).is_file():
                return Path(location) / CLIP_VOCAB_FILE
    return None


def build_clip_tokenizers(family: Family, vocabulary: Path) -> list[CLIPTokenizer]:
    """The family's tokenizer(s), in memory, from CLIP's BPE vocabulary file: the ids of the real ones."""
    vocab, merges = _read_clip_vocabulary(Path(vocabulary))
    return [
        _from_vocabulary(vocab, merges, str(vocabulary), bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=pad)
        for pad in CLIP_PAD_TOKENS[family]
    ]


def _from_vocabulary(vocab: dict[str, int], merges, name: str, **tokens: str) -> CLIPTokenizer:
    """A CLIP tokenizer of a vocabulary and merges held in memory, loaded from files written for it:
    transformers 4.x (the Web-UIs' pins) builds one only from vocab.json and merges.txt, 5.x reads those
    too, so both take this one path. The fast class is the one that 5.x names CLIPTokenizer."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        lines = "".join(f"{first} {second}\n" for first, second in merges)
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n" + lines, encoding="utf-8")
        tokenizer = CLIPTokenizerFast.from_pretrained(folder, local_files_only=True, model_max_length=MAX_LENGTH,
                                                      **tokens)
    tokenizer.name_or_path = name
    return tokenizer


@lru_cache(maxsize=2)
def _read_clip_vocabulary(path: Path) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Vocabulary and merges laid out as CLIP's own SimpleTokenizer does (one merge per line after a header)."""
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read the CLIP vocabulary ({error}); reinstall clip-anytorch") from error
    merge_count = CLIP_VOCAB_SIZE - 2 * 256 - 2
    merges = tuple(tuple(line.split()) for line in lines[1 : 1 + merge_count])
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges] + [BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE or any(len(pair) != 2 for pair in merges):
        raise UserError(f"{path}: not CLIP's BPE vocabulary ({len(vocab)} tokens); reinstall clip-anytorch")
    return vocab, cast(tuple[tuple[str, str], ...], merges)  # every line split in two, checked above


def check_vocab_fits(tokenizers, text_encoders) -> None:
    """Token ids beyond the embedding table would crash mid-training; refuse the pair up front."""
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=False):
        rows = encoder.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            raise UserError(
                f"tokenizer {tokenizer.name_or_path or '(built in)'} has {len(tokenizer)} tokens but the text encoder "
                f"has only {rows} embedding rows", "give the tokenizer folder that belongs to this model",
                field=TOKENIZER_DIR,
            )


def _from_folder(folder: Path, count: int) -> list[CLIPTokenizer] | None:
    """Tokenizers from `folder/tokenizer[_2]/`, or from `folder` itself when it holds vocab.json."""
    if all(_has_tokenizer_files(folder / sub) for sub in TOKENIZER_FOLDERS[:count]):
        return [_load(folder / sub) for sub in TOKENIZER_FOLDERS[:count]]
    if _has_tokenizer_files(folder):
        return [_load(folder) for _ in range(count)]
    return None


def _has_tokenizer_files(folder: Path) -> bool:
    has_vocab_and_merges = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    return has_vocab_and_merges or (folder / "tokenizer.json").is_file()


def _load(folder: Path, **kwargs) -> CLIPTokenizer:
    """Load offline; a folder without tokenizer_config.json would otherwise get no length limit.

    A tokenizer.json written by a newer `tokenizers` than the one installed (a folder saved today,
    read in A1111's environment) is unreadable there; the classic vocab.json + merges.txt beside it
    say the same, so they are read instead.
    """
    def read(source: Path) -> CLIPTokenizer:
        return CLIPTokenizerFast.from_pretrained(str(source), local_files_only=True, model_max_length=MAX_LENGTH,
                                                 **kwargs)

    try:
        return read(folder)
    except Exception as error:  # noqa: BLE001 - tokenizers raises a bare Exception for a file it cannot parse
        classic = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
        if classic and (folder / "tokenizer.json").is_file():
            with tempfile.TemporaryDirectory() as without_json:  # the same folder minus tokenizer.json
                for path in folder.iterdir():
                    if path.is_file() and path.name != "tokenizer.json":
                        shutil.copyfile(path, Path(without_json) / path.name)
                try:
                    return read(Path(without_json))
                except (OSError, ValueError):
                    pass
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{folder}: cannot read the tokenizer ({problem})",
                        "replace vocab.json and merges.txt (or tokenizer.json) with the model's own") from error


def _hf_hub_cache() -> Path:
    """The hub cache folder, read from the environment now (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def _from_hf_cache(family: Family) -> list[CLIPTokenizer] | None:
    """One tokenizer per text encoder from the first cached repo that has it; None if any is missing."""
    cache = _hf_hub_cache()
    found = []
    for candidates in HF_TOKENIZER_REPOS[family]:
        folder = next((f for f in (_cached_folder(cache, repo, sub) for repo, sub in candidates) if f), None)
        if folder is None:
            return None
        found.append(_load(folder))
    return found


def _cached_folder(cache: Path, repo: str, subfolder: str) -> Path | None:
    """The snapshot folder of `repo` (its `main` ref, else any snapshot) holding tokenizer files."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    ref = repo_dir / "refs" / "main"
    snapshots = [repo_dir / "snapshots" / ref.read_text().strip()] if ref.is_file() else []
    snapshots += sorted((repo_dir / "snapshots").glob("*")) if (repo_dir / "snapshots").is_dir() else []
    return next((s / subfolder for s in snapshots if _has_tokenizer_files(s / subfolder)), None)


def _missing_message(family: Family, model_path: Path, folder: Path) -> str:
    repos = " and ".join(" or ".join(f"{r}{'/' + s if s else ''}" for r, s in c) for c in HF_TOKENIZER_REPOS[family])
    layout = "tokenizer/ and tokenizer_2/" if family is Family.SDXL else "vocab.json and merges.txt"
    return (
        f"{model_path}: no {family.value} tokenizer found offline; give a tokenizer folder (with {layout}), "
        f"put it in {folder}, have {repos} in the Hugging Face cache ({_hf_hub_cache()}), "
        f"or install clip-anytorch (its CLIP vocabulary gives every family's tokenizer)"
    )
