"""`traintrain inspect`: what a LoRA file is, read from its keys and shapes first, metadata second.

Files from other trainers often carry no or stale metadata, so family, network type, ranks and
blocks come from the tensors; the metadata is shown as it is. Two key layouts are read: kohya's
(`lora_unet_...`, every SD file) and diffusers' (`transformer.<module>.lora_A.weight`,
`text_encoder.<module>...`), in which Flux, SD3 and Z-Image files are saved.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from traintrain.choices import ALL_BLOCK_IDS, TEXT_ENCODER_BLOCK, NetworkType
from traintrain.errors import UserError
from traintrain.models.families import SD3_KOHYA_VERSIONS, SPECS, TRANSFORMER_FAMILIES
from traintrain.networks.kohya_format import NETWORK_MODULES, load_lora
from traintrain.networks.targeting import block_id_of
from traintrain.networks.zimage_targeting import STACKS as ZIMAGE_STACKS

if TYPE_CHECKING:
    import torch

FAMILY_BY_VERSION = {"sd_v1": "sd1", "sd_v2": "sd2"} | {SPECS[family].base_model_version: family.value
                                                        for family in TRANSFORMER_FAMILIES}
FAMILY_BY_TEXT_WIDTH = {768: "sd1", 1024: "sd2"}
FAMILY_BY_CROSS_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
LAYERS_PER_BLOCK = 2  # every SD1/SD2/SDXL UNet
BLOCK_ORDER = {block: index for index, block in enumerate(ALL_BLOCK_IDS)}
SGM_BLOCK = re.compile(r"lora_unet_(?:input_blocks_(\d+)|middle_block|output_blocks_(\d+))")
# diffusers' layout: the part, the module's path, then the adapter's tensor
DIFFUSERS_KEY = re.compile(
    r"^(?P<stem>(?:transformer|text_encoder(?:_2)?)\..+?)\."
    r"(?P<suffix>lora_[AB]\.weight|lora_(?:down|up|mid)\.weight|alpha|dora_scale|hada_\w+|lokr_\w+)$"
)
PEFT_SUFFIXES = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}
FAMILY_BY_ARCHITECTURE = {SPECS[family].modelspec_architecture: family.value for family in TRANSFORMER_FAMILIES}
# block letters of each transformer family's stacks (networks/*_targeting.py name the blocks the same way)
TRANSFORMER_STACKS = {
    "flux": {"transformer_blocks": "D", "single_transformer_blocks": "S"},
    "sd3": {"transformer_blocks": "J"},
    "zimage": ZIMAGE_STACKS,
}
TRANSFORMER_BLOCK = re.compile(r"^transformer\.(\w+)\.(\d+)\.")
DIFFUSERS_BLOCK = re.compile(
    r"lora_unet_(?:(down|up)_blocks_(\d+)_(resnets|attentions|downsamplers|upsamplers)_(\d+)|mid_block)"
)


@dataclass
class ModuleInfo:
    rank: int | None  # None: LoKr with both factors full
    alpha: float | None


@dataclass
class LoraSummary:
    file: str
    family: str
    network_type: NetworkType
    network_module: str
    unet_modules: int
    text_encoder_modules: int
    blocks: list[str]
    modules: dict[str, ModuleInfo]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def module_count(self) -> int:
        return len(self.modules)

    def rank_alpha_groups(self) -> list[tuple[tuple, int]]:
        """(rank, alpha) pairs with how many modules use each, most common first."""
        return Counter((m.rank, m.alpha) for m in self.modules.values()).most_common()

    def to_json(self) -> dict:
        data = asdict(self)
        data["network_type"] = self.network_type.value
        data["module_count"] = self.module_count
        return data


def inspect_lora(path) -> LoraSummary:
    tensors, metadata = load_lora(Path(path))
    stems = _kohya_stems(tensors) or _diffusers_stems(tensors)
    if not stems:
        raise UserError(
            f"{path}: no LoRA modules in it (no lora_unet_/lora_te or transformer./text_encoder. adapter keys); "
            "is it a model rather than a LoRA?"
        )
    network_type = _network_type(stems)
    modules = {stem: _module_info(parts) for stem, parts in sorted(stems.items())}
    family = _family(stems, metadata)
    found = {b for b in (block_of(stem, family) for stem in stems) if b}
    blocks = sorted(found, key=lambda block: (BLOCK_ORDER.get(block, len(BLOCK_ORDER)), block))
    text = sum(1 for stem in stems if stem.startswith(("lora_te", "text_encoder")))
    return LoraSummary(
        file=str(path),
        family=family,
        network_type=network_type,
        network_module=metadata.get("ss_network_module", NETWORK_MODULES[network_type]),
        unet_modules=len(stems) - text,
        text_encoder_modules=text,
        blocks=blocks,
        modules=modules,
        metadata=metadata,
    )


def _kohya_stems(tensors: dict) -> dict[str, dict[str, torch.Tensor]]:
    stems: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        stem, _, suffix = key.partition(".")
        if stem.startswith("lora_"):
            stems.setdefault(stem, {})[suffix] = tensor
    return stems


def _diffusers_stems(tensors: dict) -> dict[str, dict[str, torch.Tensor]]:
    """Module path -> its tensors, peft's lora_A / lora_B named as kohya's down / up."""
    stems: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = DIFFUSERS_KEY.match(key)
        if match:
            suffix = PEFT_SUFFIXES.get(match["suffix"], match["suffix"])
            stems.setdefault(match["stem"], {})[suffix] = tensor
    return stems


def block_of(stem: str, family: str = "") -> str | None:
    """A1111 block id of a kohya module name, in SGM (SDXL) or diffusers (SD1/SD2) naming; for a
    transformer family's diffusers-layout module, its block id (D00, S03, J01, L00, ...)."""
    if stem.startswith(("lora_te", "text_encoder")):
        return TEXT_ENCODER_BLOCK
    match = TRANSFORMER_BLOCK.match(stem)
    if match:
        letter = TRANSFORMER_STACKS.get(family, {}).get(match[1])
        return f"{letter}{int(match[2]):02d}" if letter else None
    match = SGM_BLOCK.match(stem)
    if match:
        if match[1] is not None:
            return f"IN{int(match[1]):02d}"
        return "M00" if match[2] is None else f"OUT{int(match[2]):02d}"
    match = DIFFUSERS_BLOCK.match(stem)
    if match:
        path = "mid_block" if match[1] is None else f"{match[1]}_blocks.{match[2]}.{match[3]}.{match[4]}"
        return block_id_of(path, LAYERS_PER_BLOCK)
    return None


def _network_type(stems: dict) -> NetworkType:
    suffixes = {suffix for parts in stems.values() for suffix in parts}
    if any(s.startswith("hada_") for s in suffixes):
        return NetworkType.LOHA
    if any(s.startswith("lokr_") for s in suffixes):
        return NetworkType.LOKR
    if "lora_down.weight" not in suffixes:
        raise UserError(
            f"unknown adapter tensors ({', '.join(sorted(suffixes)[:4])}); "
            "inspect reads LoRA, LoCon, LoHa and LoKr files"
        )
    kxk = any(
        parts["lora_down.weight"].ndim == 4 and parts["lora_down.weight"].shape[-1] > 1 for parts in stems.values()
    )
    return NetworkType.C3LIER if kxk else NetworkType.LIERLA


def _module_info(parts: dict) -> ModuleInfo:
    if "lora_down.weight" in parts:
        rank = parts["lora_down.weight"].shape[0]
    elif "hada_w1_b" in parts:
        rank = parts["hada_w1_b"].shape[0]
    elif "lokr_w2_a" in parts:
        rank = parts["lokr_w2_a"].shape[1]
    elif "lokr_w1_a" in parts:
        rank = parts["lokr_w1_a"].shape[1]
    else:
        rank = None
    alpha = float(parts["alpha"]) if "alpha" in parts else rank
    return ModuleInfo(rank, alpha)


def _family(stems: dict, metadata: dict) -> str:
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl"
    if version in FAMILY_BY_VERSION:
        return FAMILY_BY_VERSION[version]
    if version in SD3_KOHYA_VERSIONS:
        return "sd3"
    architecture = metadata.get("modelspec.architecture", "")
    if architecture in FAMILY_BY_ARCHITECTURE:
        return FAMILY_BY_ARCHITECTURE[architecture]
    roots = {match[1] for match in map(TRANSFORMER_BLOCK.match, stems) if match}
    if roots & ZIMAGE_STACKS.keys():
        return "zimage"
    if "single_transformer_blocks" in roots:
        return "flux"
    if any(
        s.startswith(("lora_te1_", "lora_te2_", "lora_unet_input_blocks", "lora_unet_output_blocks")) for s in stems
    ):
        return "sdxl"
    for stem, parts in stems.items():
        width = _input_width(parts)
        if stem.startswith("lora_te_") and "q_proj" in stem and width in FAMILY_BY_TEXT_WIDTH:
            return FAMILY_BY_TEXT_WIDTH[width]
        if stem.endswith("attn2_to_k") and width in FAMILY_BY_CROSS_WIDTH:
            return FAMILY_BY_CROSS_WIDTH[width]
    return "unknown"


def _input_width(parts: dict) -> int | None:
    for suffix in ("lora_down.weight", "hada_w1_b"):
        if suffix in parts:
            return parts[suffix].shape[1]
    return None


def format_summary(summary: LoraSummary, value_width: int = 100) -> str:
    """The summary as lines for a terminal; long metadata values are cut at `value_width`."""
    groups = summary.rank_alpha_groups()
    lines = [
        f"file: {summary.file}",
        f"family: {summary.family}",
        f"network: {summary.network_type.value} ({summary.network_module})",
        f"modules: {summary.module_count} ({_denoiser_name(summary.family)} {summary.unet_modules}, "
        f"text encoder {summary.text_encoder_modules})",
    ]
    if len(groups) == 1:
        lines.append(f"rank/alpha: {_rank_alpha(groups[0][0])}")
    else:
        lines.append("rank/alpha: " + ", ".join(f"{_rank_alpha(pair)} ({count} modules)" for pair, count in groups))
        common = groups[0][0]
        lines += [
            f"  {name}: {_rank_alpha((m.rank, m.alpha))}"
            for name, m in summary.modules.items()
            if (m.rank, m.alpha) != common
        ]
    lines.append("blocks: " + ", ".join(summary.blocks))
    lines.append("metadata:" if summary.metadata else "metadata: none")
    for key in sorted(summary.metadata):
        value = summary.metadata[key].replace("\n", " ")
        lines.append(f"  {key}: {value[:value_width]}{'...' if len(value) > value_width else ''}")
    return "\n".join(lines)


def _denoiser_name(family: str) -> str:
    return "transformer" if family in TRANSFORMER_STACKS else "UNet"


def _rank_alpha(pair) -> str:
    rank, alpha = pair
    if rank is None:
        return "full (no rank)"
    return f"{rank}/{alpha:g}"


def summary_json(summary: LoraSummary) -> str:
    return json.dumps(summary.to_json(), indent=2, ensure_ascii=False)
