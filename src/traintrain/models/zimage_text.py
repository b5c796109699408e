"""Z-Image's text side: one Qwen3 model and its Qwen2 BPE tokenizer, encoded exactly as ZImagePipeline does.

The prompt is wrapped in the tokenizer's chat template (one user message, the assistant's turn opened),
padded to 512 tokens (the pipeline's max_sequence_length; a tokenizer with a lower limit caps it) and run
through Qwen3; the conditioning is the penultimate layer's states of the prompt's own tokens. The pipeline
hands the transformer one variable-length tensor per prompt; we keep the padded [B, tokens, D] states
with their attention mask (`Conditioning.mask`) so that batches stack, and drop the padding at the
transformer's door (modes/flow_matching.py).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from traintrain.errors import TOKENIZER_DIR, UserError
from traintrain.models.encoding import Conditioning
from traintrain.models.tokenizers import TINY_WORDS, _hf_hub_cache, bytes_to_unicode

if TYPE_CHECKING:
    from transformers import Qwen2Tokenizer

# Z-Image came to diffusers in 0.36 and Qwen3 to transformers in 4.51. The Web-UI hosts pin older ones
# (diffusers 0.31; transformers 4.30 in A1111, 4.46 in Forge), where the other families still work:
# Z-Image's classes are imported only when a Z-Image model is used.
ZIMAGE_LIBRARIES = {"diffusers": ("0.36", ("ZImageTransformer2DModel", "ZImagePipeline")),
                    "transformers": ("4.51", ("Qwen2Tokenizer", "Qwen3Config", "Qwen3Model"))}


def zimage_class(name: str) -> Any:
    """One of Z-Image's library classes, or one error naming the versions Z-Image needs."""
    for library, (version, names) in ZIMAGE_LIBRARIES.items():
        if name in names:
            module = importlib.import_module(library)
            found = getattr(module, name, None)
            if found is None:
                raise UserError(
                    f"Z-Image needs {library} {version} or newer; this Python has {library} {module.__version__}",
                    "train Z-Image where `pip install -U 'diffusers>=0.36' 'transformers>=4.51'` is possible "
                    "(the Web-UI hosts pin older versions)", field="model")
            return found
    raise KeyError(name)

MAX_LENGTH = 512  # ZImagePipeline's max_sequence_length
TOKENIZER_FOLDER = "tokenizer"
ZIMAGE_REPOS = ("Tongyi-MAI/Z-Image-Turbo", "Tongyi-MAI/Z-Image")
TINY_LENGTH = 24  # the tiny tokenizer's model_max_length: test batches stay short
# Qwen3's special tokens and, for the tiny tokenizer, the part of its chat template a one-message prompt uses
# (with enable_thinking, as the pipeline asks, Qwen3's template opens the assistant's turn and nothing more).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen_tokenizer(words: tuple[str, ...] = TINY_WORDS) -> Qwen2Tokenizer:
    """A real byte-level BPE Qwen2 tokenizer: 256 byte symbols, one token per word of `words` (and of the
    chat template's roles), with and without its leading space, Qwen's special tokens and a chat template."""
    symbols = list(bytes_to_unicode().values())
    space = bytes_to_unicode()[ord(" ")]
    tokens, merges = list(symbols), list[tuple[str, str]]()
    for word in (*words, "user", "assistant"):
        for pieces in (list(word), [space, word]):  # the word, then the word after a space
            while len(pieces) > 1:
                pair = (pieces[0], pieces[1])
                if pair not in merges:
                    merges.append(pair)
                    tokens.append(pieces[0] + pieces[1])
                pieces[:2] = [pieces[0] + pieces[1]]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    # the tokenizers library takes (left, right) pairs; transformers' annotation says strings
    tokenizer = zimage_class("Qwen2Tokenizer")(vocab=vocab, merges=merges, model_max_length=TINY_LENGTH)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.name_or_path = "tiny-qwen"
    return tokenizer


def find_zimage_tokenizer(model_path, tokenizer_dir=None) -> Qwen2Tokenizer:
    """The Qwen2 tokenizer from the user's folder, the model's `tokenizer/` (for a single file `X.tokenizer/`
    beside it) or the Hugging Face cache of Tongyi-MAI/Z-Image(-Turbo); offline."""
    model_path = Path(model_path)
    own = model_path if model_path.is_dir() else model_path.with_name(model_path.stem + ".tokenizer")
    folders = [Path(tokenizer_dir), Path(tokenizer_dir) / TOKENIZER_FOLDER] if tokenizer_dir else []
    folders.append(own / TOKENIZER_FOLDER)
    cache = _hf_hub_cache()
    for repo in ZIMAGE_REPOS:
        snapshots = cache / ("models--" + repo.replace("/", "--")) / "snapshots"
        folders += [s / TOKENIZER_FOLDER for s in sorted(snapshots.glob("*"))] if snapshots.is_dir() else []
    folder = next((f for f in folders if (f / "tokenizer.json").is_file() or (f / "vocab.json").is_file()), None)
    if folder is None:
        raise UserError(
            f"{model_path}: no Qwen tokenizer found offline for this Z-Image model",
            f"put the model's tokenizer/ folder in {own}, give a tokenizer folder holding it, or have "
            f"{ZIMAGE_REPOS[0]} in the Hugging Face cache ({cache})", field=TOKENIZER_DIR,
        )
    try:
        return zimage_class("Qwen2Tokenizer").from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise UserError(f"{folder}: cannot read the Qwen tokenizer ({error})",
                        "replace it with the model's own tokenizer folder", field=TOKENIZER_DIR) from error


def sequence_length(tokenizer) -> int:
    return min(MAX_LENGTH, int(tokenizer.model_max_length))


def encode_zimage_prompts(components, texts: list[str]) -> Conditioning:
    """`hidden` [B, tokens, D] (Qwen3's penultimate states) and `mask` [B, tokens], as ZImagePipeline."""
    tokenizer, encoder = components.tokenizers[0], components.text_encoders[0]
    templated = [tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                               add_generation_prompt=True, enable_thinking=True) for text in texts]
    inputs = tokenizer(templated, padding="max_length", max_length=sequence_length(tokenizer), truncation=True,
                       return_tensors="pt")
    device = next(encoder.parameters()).device
    mask = inputs.attention_mask.to(device).bool()
    hidden = encoder(input_ids=inputs.input_ids.to(device), attention_mask=mask,
                     output_hidden_states=True).hidden_states[-2]
    return Conditioning(hidden, None, mask)


def prompt_states(conditioning: Conditioning) -> list[torch.Tensor]:
    """One [tokens_i, D] tensor per prompt, its padding dropped: what ZImagePipeline gives the transformer."""
    if conditioning.mask is None:
        return list(conditioning.hidden.unbind(0))
    return [hidden[mask.to(hidden.device)] for hidden, mask in zip(conditioning.hidden, conditioning.mask,
                                                                   strict=True)]
