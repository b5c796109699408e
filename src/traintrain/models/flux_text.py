"""Flux.1's text side: CLIP-L (its pooled output) and T5 (its hidden states), tokenizers found offline.

Flux conditions on T5's per-token states padded to a fixed length (512 for dev, FluxPipeline's
default) and on CLIP-L's pooled vector of the first 77 tokens, exactly as FluxPipeline encodes them,
so a LoRA sees at training what it sees at inference.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import T5TokenizerFast  # type: ignore[attr-defined]  # 5.x: lazy alias

from traintrain.errors import TOKENIZER_DIR, UserError
from traintrain.models.encoding import Conditioning
from traintrain.models.families import Family
from traintrain.models.tokenizers import (
    MAX_LENGTH,
    TINY_WORDS,
    _from_folder,
    _from_hf_cache,
    _hf_hub_cache,
    build_clip_tokenizers,
    find_clip_vocabulary,
)
from traintrain.training.events import Message, Reporter, ignore

T5_MAX_LENGTH = 512  # FluxPipeline's max_sequence_length for dev; a tokenizer with a lower limit caps it
T5_FOLDER = "tokenizer_2"
T5_HF_REPOS = (("black-forest-labs/FLUX.1-dev", "tokenizer_2"), ("black-forest-labs/FLUX.1-schnell", "tokenizer_2"),
               ("google/t5-v1_1-xxl", ""))
TINY_T5_LENGTH = 16  # the tiny tokenizer's model_max_length: test batches stay a few tokens long


def build_tiny_t5_tokenizer(words: tuple[str, ...] = TINY_WORDS) -> T5TokenizerFast:
    """A real SentencePiece-style (Unigram) T5 tokenizer: `<pad>` 0, `</s>` 1, `<unk>` 2, then one piece
    per word of `words` and single letters, so any other lower-case word splits into letters."""
    pieces = [f"\u2581{word}" for word in words] + ["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(p, -float(i + 1)) for i, p in enumerate(pieces)]
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=TINY_T5_LENGTH)
    tokenizer.name_or_path = "tiny-t5"
    return tokenizer


def find_flux_tokenizers(model_path, tokenizer_dir=None, report: Reporter = ignore) -> list:
    """[CLIP tokenizer, T5 tokenizer] from the user's folder, the model's (`tokenizer/`, `tokenizer_2/`; for a
    single file `X.tokenizer/` beside it) or the Hugging Face cache; CLIP's may also come from the clip package."""
    model_path = Path(model_path)
    folders = [Path(tokenizer_dir)] if tokenizer_dir else []
    folders.append(model_path if model_path.is_dir() else model_path.with_name(model_path.stem + ".tokenizer"))
    clip = next((found[0] for f in folders if f.is_dir() and (found := _from_folder(f, 1)) is not None), None)
    clip = clip or _first(_from_hf_cache(Family.SD1))
    if clip is None and (vocabulary := find_clip_vocabulary()) is not None:
        clip = build_clip_tokenizers(Family.SD1, vocabulary)[0]
        report(Message(f"no CLIP tokenizer beside the Flux model; built it from CLIP's vocabulary in {vocabulary}"))
    t5_folder = next((f / T5_FOLDER for f in folders if _has_t5_files(f / T5_FOLDER)), None)
    t5_folder = t5_folder or _cached_t5()
    if clip is None or t5_folder is None:
        missing = " and ".join(name for name, found in (("CLIP (tokenizer/)", clip), ("T5 (tokenizer_2/)", t5_folder))
                               if found is None)
        raise UserError(
            f"{model_path}: no {missing} tokenizer found offline for this Flux model",
            f"put the model's tokenizer/ and tokenizer_2/ folders in {folders[-1]}, give a tokenizer folder holding "
            f"them, or have black-forest-labs/FLUX.1-dev in the Hugging Face cache ({_hf_hub_cache()})",
            field=TOKENIZER_DIR,
        )
    return [clip, _load_t5(t5_folder)]


def _first(found: list | None):
    return found[0] if found else None


def _has_t5_files(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file()


def _cached_t5() -> Path | None:
    cache = _hf_hub_cache()
    for repo, subfolder in T5_HF_REPOS:
        snapshots = cache / ("models--" + repo.replace("/", "--")) / "snapshots"
        for snapshot in sorted(snapshots.glob("*")) if snapshots.is_dir() else []:
            if _has_t5_files(snapshot / subfolder):
                return snapshot / subfolder
    return None


def _load_t5(folder: Path) -> T5TokenizerFast:
    try:
        return T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise UserError(f"{folder}: cannot read the T5 tokenizer ({error})",
                        "replace it with the model's own tokenizer_2 folder", field=TOKENIZER_DIR) from error


def t5_length(tokenizer) -> int:
    """Tokens T5 encodes per prompt: FluxPipeline's 512, or less where the tokenizer says so (tiny ones)."""
    return min(T5_MAX_LENGTH, int(tokenizer.model_max_length))


def flux_t5_states(components, texts: list[str]) -> torch.Tensor:
    """T5's hidden states [B, L, D] at the training length, as FluxPipeline encodes them."""
    t5_tokenizer, t5 = components.tokenizers[1], components.text_encoders[1]
    t5_ids = t5_tokenizer(texts, padding="max_length", max_length=t5_length(t5_tokenizer), truncation=True,
                          return_tensors="pt").input_ids
    return t5(t5_ids.to(_device(t5)), output_hidden_states=False)[0]


def encode_flux_prompts(components, texts: list[str], t5_states: torch.Tensor | None = None) -> Conditioning:
    """T5 hidden states [B, L, D] (`hidden`) and CLIP-L's pooled output [B, 768] (`pooled`), as FluxPipeline.
    `t5_states` given (cached while CLIP-L trains) are used instead of running T5."""
    clip_tokenizer, clip = components.tokenizers[0], components.text_encoders[0]
    clip_ids = clip_tokenizer(texts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                              return_tensors="pt").input_ids
    pooled = clip(clip_ids.to(_device(clip)), output_hidden_states=False).pooler_output
    if t5_states is None:
        return Conditioning(flux_t5_states(components, texts), pooled)
    return Conditioning(t5_states.to(pooled.device, pooled.dtype), pooled)


def _device(model) -> torch.device:
    return next(model.parameters()).device

