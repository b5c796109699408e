"""Long captions are encoded in 75-token chunks and concatenated (as A1111 does), never truncated."""

import pytest
import torch

from helpers import tiny_components
from traintrain.models.encoding import CHUNK, chunk_token_ids, encode_prompts


@pytest.fixture(scope="module")
def components():
    return tiny_components()


def words(tokenizer, count: int) -> str:
    """A caption of exactly `count` tokens."""
    text = " ".join(["red"] * count)
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == count
    return text


@pytest.mark.parametrize("count, chunks", [(0, 1), (1, 1), (75, 1), (76, 2), (150, 2), (151, 3)])
def test_chunk_count(components, count, chunks):
    tokenizer = components.tokenizers[0]
    ids = chunk_token_ids(tokenizer, words(tokenizer, count))
    assert len(ids) == chunks and all(len(chunk) == CHUNK + 2 for chunk in ids)
    assert all(chunk[0] == tokenizer.bos_token_id for chunk in ids)


def test_long_caption_keeps_every_token(components):
    tokenizer = components.tokenizers[0]
    text = ", ".join(f"cat {i}" for i in range(40))
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = chunk_token_ids(tokenizer, text)
    assert len(tokens) > CHUNK and len(ids) == 2
    kept = [t for chunk in ids for t in chunk[1 : 1 + CHUNK]][: len(tokens)]
    assert kept == tokens
    assert ids[1][1 + len(tokens) - CHUNK] == tokenizer.eos_token_id


def test_long_caption_embedding_is_both_chunks_not_the_truncated_one(components):
    tokenizer = components.tokenizers[0]
    head, tail = words(tokenizer, CHUNK), "blue green yellow"
    with torch.no_grad():
        full = encode_prompts(components, [f"{head} {tail}"]).hidden
        truncated = encode_prompts(components, [head]).hidden
        tail_only = encode_prompts(components, [tail]).hidden
        empty = encode_prompts(components, [""]).hidden
    assert full.shape == (1, 2 * (CHUNK + 2), truncated.shape[-1])
    # Chunk one is the truncated caption; chunk two carries the rest (not an empty chunk).
    torch.testing.assert_close(full[:, : CHUNK + 2], truncated)
    torch.testing.assert_close(full[:, CHUNK + 2 :], tail_only)
    assert not torch.allclose(full, torch.cat([truncated, empty], dim=1))


def test_batch_pads_short_captions_with_empty_chunks(components):
    tokenizer = components.tokenizers[0]
    with torch.no_grad():
        both = encode_prompts(components, ["red", words(tokenizer, 100)]).hidden
        short = encode_prompts(components, ["red"]).hidden
        empty = encode_prompts(components, [""]).hidden
    assert both.shape[1] == 2 * (CHUNK + 2)
    torch.testing.assert_close(both[:1], torch.cat([short, empty], dim=1))
