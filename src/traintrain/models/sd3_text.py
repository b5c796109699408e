"""SD3's text side: CLIP-L, CLIP-G and T5, encoded exactly as StableDiffusion3Pipeline encodes a prompt.

The two CLIPs' penultimate hidden states are concatenated along the features and zero-padded to T5's
width; T5's per-token states (256 tokens, the pipeline's default) follow along the sequence. The pooled
vector is CLIP-L's projected output followed by CLIP-G's. Without T5 (the reference allows dropping it to
save memory) zeros of CLIP's 77 tokens stand in its place, as the pipeline does with text_encoder_3=None.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional

from traintrain.errors import TOKENIZER_DIR, UserError
from traintrain.models.encoding import Conditioning
from traintrain.models.families import Family
from traintrain.models.flux_text import _cached_t5, _has_t5_files, _load_t5
from traintrain.models.tokenizers import MAX_LENGTH, _hf_hub_cache, find_tokenizers
from traintrain.training.events import Reporter, ignore

T5_MAX_LENGTH = 256  # StableDiffusion3Pipeline's max_sequence_length; a tokenizer with a lower limit caps it
T5_FOLDER = "tokenizer_3"
SD3_REPO = "stabilityai/stable-diffusion-3-medium-diffusers"


def find_sd3_tokenizers(model_path, tokenizer_dir=None, report: Reporter = ignore, *, with_t5: bool = True) -> list:
    """[CLIP-L, CLIP-G(, T5)] tokenizers, offline: the two CLIPs as SDXL's are found (they are the same
    tokenizers), T5's from `tokenizer_3/` in the user's or the model's folder, or the Hugging Face cache."""
    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.with_name(model_path.stem + ".tokenizer")
    try:
        clips = find_tokenizers(Family.SDXL, model_path, tokenizer_dir, report)
    except UserError as error:
        raise UserError(
            f"{model_path}: no CLIP-L / CLIP-G tokenizers found offline for this SD3 model",
            f"put the model's tokenizer/ and tokenizer_2/ folders in {folder}, give a tokenizer folder holding "
            f"them, or have {SD3_REPO} in the Hugging Face cache ({_hf_hub_cache()})", field=TOKENIZER_DIR,
        ) from error
    if not with_t5:
        return clips
    folders = [Path(tokenizer_dir)] if tokenizer_dir else []
    folders.append(folder)
    t5 = next((f / T5_FOLDER for f in folders if _has_t5_files(f / T5_FOLDER)), None) or _cached_sd3_t5()
    if t5 is None:
        raise UserError(
            f"{model_path}: no T5 (tokenizer_3/) tokenizer found offline for this SD3 model",
            f"put the model's tokenizer_3/ folder in {folder}, or have {SD3_REPO} in the Hugging Face cache "
            f"({_hf_hub_cache()})", field=TOKENIZER_DIR,
        )
    return [*clips, _load_t5(t5)]


def _cached_sd3_t5() -> Path | None:
    snapshots = _hf_hub_cache() / ("models--" + SD3_REPO.replace("/", "--")) / "snapshots"
    for snapshot in sorted(snapshots.glob("*")) if snapshots.is_dir() else []:
        if _has_t5_files(snapshot / T5_FOLDER):
            return snapshot / T5_FOLDER
    return _cached_t5()  # Flux's T5 tokenizer is the same T5-v1.1 one


def t5_length(tokenizer) -> int:
    return min(T5_MAX_LENGTH, int(tokenizer.model_max_length))


def sd3_t5_states(components, texts: list[str]) -> torch.Tensor | None:
    """T5's per-token states at the training length, as the pipeline encodes them; None without T5."""
    if len(components.text_encoders) < 3:
        return None
    t5_tokenizer, t5 = components.tokenizers[2], components.text_encoders[2]
    ids = t5_tokenizer(texts, padding="max_length", max_length=t5_length(t5_tokenizer), truncation=True,
                       return_tensors="pt").input_ids
    return t5(ids.to(_device(t5)))[0]


def encode_sd3_prompts(components, texts: list[str], t5_states: torch.Tensor | None = None) -> Conditioning:
    """`hidden` [B, 77 + T5 tokens, T5 width] and `pooled` [B, CLIP-L + CLIP-G projection], as the pipeline.
    `t5_states` given (cached while the CLIPs train) are used instead of running T5."""
    states, pooled = [], []
    for tokenizer, encoder in zip(components.tokenizers[:2], components.text_encoders[:2], strict=True):
        ids = tokenizer(texts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                        return_tensors="pt").input_ids
        output = encoder(ids.to(_device(encoder)), output_hidden_states=True)
        pooled.append(output[0])
        states.append(output.hidden_states[-2])
    device = states[0].device
    clip = torch.cat([s.to(device) for s in states], dim=-1)
    width = components.transformer.config.joint_attention_dim
    clip = functional.pad(clip, (0, width - clip.shape[-1]))
    if t5_states is None:
        t5_states = sd3_t5_states(components, texts)
    if t5_states is None:
        t5_states = torch.zeros(clip.shape, device=device, dtype=clip.dtype)
    t5_states = t5_states.to(device, clip.dtype)
    return Conditioning(torch.cat([clip, t5_states], dim=-2), torch.cat([p.to(device) for p in pooled], dim=-1))


def _device(model) -> torch.device:
    return next(model.parameters()).device
