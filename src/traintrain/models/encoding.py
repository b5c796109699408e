"""Prompt encoding as A1111 does it: 75-token chunks each wrapped in BOS/EOS, concatenated.

Long captions are never silently cut at 77 tokens; a batch is padded with empty chunks so that
every prompt in it has the same length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from traintrain.models.families import Family

CHUNK = 75


@dataclass
class Conditioning:
    hidden: torch.Tensor  # [B, 77 * chunks, D]
    pooled: torch.Tensor | None = None  # SDXL: pooled OpenCLIP-bigG embedding [B, 1280]
    mask: torch.Tensor | None = None  # Z-Image: [B, tokens] bool, the prompt's own tokens (padding is dropped)

    def map(self, function) -> Conditioning:
        """The same function applied to each tensor (a batch shard, a device move)."""
        return Conditioning(function(self.hidden), None if self.pooled is None else function(self.pooled),
                            None if self.mask is None else function(self.mask))


def chunk_token_ids(tokenizer, text: str) -> list[list[int]]:
    """Token ids of `text` in 77-long chunks: BOS, up to 75 tokens, EOS, padding."""
    ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    pieces = [ids[i : i + CHUNK] for i in range(0, len(ids), CHUNK)] or [[]]
    return [[bos] + piece + [eos] + [pad] * (CHUNK - len(piece)) for piece in pieces]


def _pad_chunks(chunk_lists: list[list[list[int]]], empty: list[int]) -> torch.Tensor:
    most = max(len(c) for c in chunk_lists)
    padded = [c + [empty] * (most - len(c)) for c in chunk_lists]
    return torch.tensor(padded, dtype=torch.long)  # [B, chunks, 77]


def _encode_one(encoder, ids: torch.Tensor, family: Family, is_second: bool):
    """Hidden states (and pooled output for SDXL's second encoder) of [N, 77] token ids."""
    if family == Family.SDXL:
        out = encoder(ids, output_hidden_states=True)
        hidden = out.hidden_states[-2]
        pooled = out.text_embeds if is_second else None
        return hidden, pooled
    return encoder(ids).last_hidden_state, None


def encode_t5(components, texts: list[str]) -> torch.Tensor | None:
    """T5's states of the prompts on Flux and SD3: the part of the conditioning no adapter trains, which a mode
    training the CLIP encoders (block BASE) caches and passes to encode_prompts. None on the other families and
    on SD3 without T5."""
    if components.family is Family.FLUX:
        from traintrain.models.flux_text import flux_t5_states

        return flux_t5_states(components, texts)
    if components.family is Family.SD3:
        from traintrain.models.sd3_text import sd3_t5_states

        return sd3_t5_states(components, texts)
    return None


def encode_prompts(components, texts: list[str], t5_states: torch.Tensor | None = None) -> Conditioning:
    """Encode a batch of prompts with the model's text encoder(s), on their current device/dtype; on Flux and SD3
    `t5_states` (encode_t5's, cached) stand in for running T5."""
    if components.family is Family.FLUX:  # T5 states and CLIP's pooled vector, as FluxPipeline encodes them
        from traintrain.models.flux_text import encode_flux_prompts

        return encode_flux_prompts(components, texts, t5_states)
    if components.family is Family.ZIMAGE:  # Qwen3's penultimate states of the chat-templated prompt
        from traintrain.models.zimage_text import encode_zimage_prompts

        return encode_zimage_prompts(components, texts)
    if components.family is Family.SD3:  # CLIP-L/G states padded and T5's appended, as StableDiffusion3Pipeline
        from traintrain.models.sd3_text import encode_sd3_prompts

        return encode_sd3_prompts(components, texts, t5_states)
    hiddens, pooled = [], None
    for index, (tokenizer, encoder) in enumerate(zip(components.tokenizers, components.text_encoders, strict=False)):
        empty = chunk_token_ids(tokenizer, "")[0]
        ids = _pad_chunks([chunk_token_ids(tokenizer, t) for t in texts], empty)
        batch, chunks, length = ids.shape
        device = next(encoder.parameters()).device
        hidden, pool = _encode_one(encoder, ids.view(batch * chunks, length).to(device), components.family, index == 1)
        hiddens.append(hidden.reshape(batch, chunks * length, hidden.shape[-1]))
        if pool is not None:
            # A1111 takes the pooled output of the first chunk.
            pooled = pool.view(batch, chunks, -1)[:, 0]
    return Conditioning(torch.cat(hiddens, dim=-1), pooled)
