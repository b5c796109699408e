"""The toy-world model: a tiny SD1-architecture model trained on the toy world, so prompts steer it.

Random tiny models follow no prompt, so no effect of a mode can be seen on them. This one is
trained by the project itself in two stages from `RECIPE`: a VAE that reconstructs the toy
pictures (three levels, so a 64 px picture is a 16 x 16 latent: a small shape is a few latent
pixels, not one), then the UNet and the text encoder together on the denoising objective of SD1
with the scenes' captions (one in ten left empty, for classifier-free guidance; half of them
with some words left out, as real captions name only some of what is seen, so that a prompt of
one word such as iLECO's "red" means what it means in a full caption). Everything runs
on the CPU in one thread from fixed seeds, so the same recipe gives the same files; the files are
committed (`toyworld/files/`) with the recipe and their checksums, because a build takes minutes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel

from traintrain.data.latent_cache import file_digest
from traintrain.models.assembly import config_template
from traintrain.models.components import ModelComponents
from traintrain.models.families import SPECS, Family
from traintrain.models.tiny import tiny_text_encoder, tiny_unet_config
from traintrain.models.tokenizers import build_tiny_tokenizer
from traintrain.toyworld.scenes import (
    POSITION_PHRASE,
    Background,
    Colour,
    Scene,
    Shape,
    Size,
    caption,
    draw,
    sample_scenes,
)
from traintrain.training.runtime import noise_scheduler

FILES = Path(__file__).resolve().parent / "files"
MODEL_NAME = "toy-world-sd1.safetensors"
RECIPE_NAME = "recipe.json"
# One token per word the captions use (any other word, such as a trigger word, is cut in bytes).
TOY_WORDS = tuple(dict.fromkeys(
    ["a"] + [member.value for kind in (Size, Colour, Shape, Background) for member in kind]
    + " ".join(POSITION_PHRASE.values()).split()
))
FAMILY = Family.SD1
VAE_CHANNELS = [32, 64, 64]  # three levels: downscale factor 4
# SD1's UNet layout at toy widths, one resnet per level and no attention at the 16 x 16 level (as
# SDXL has none at its highest resolution): five times cheaper a step on the CPU than two resnets
# and attention everywhere, with attention left where the layout matters (8 x 8, 4 x 4, middle).
UNET_CHANGES = {
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    picture_size: int = 64
    pool: int = 4096  # scenes drawn once; both stages take their batches from them
    vae_steps: int = 600
    vae_batch: int = 16
    vae_lr: float = 3e-3
    vae_latent_noise: float = 0.1  # of the latents' spread: the decoder learns to forgive a sampler's error
    unet_steps: int = 3000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    text_lr: float = 3e-4
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    partial_captions: float = 0.5  # of the captions left: the share with words left out
    keep_word: float = 0.5  # in those, each attribute's chance to be named
    fingerprint_steps: int = 20  # the reproduction check replays this many steps of each stage


RECIPE = Recipe()
Progress = Callable[[str, int, int, float], None]  # stage, step, steps, loss


def build_toy_components(recipe: Recipe = RECIPE) -> ModelComponents:
    """The untrained model of the recipe, the same for the same seed."""
    tokenizer = build_tiny_tokenizer(TOY_WORDS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        unet = UNet2DConditionModel.from_config(tiny_unet_config(FAMILY) | UNET_CHANGES)
        vae = AutoencoderKL.from_config(config_template(FAMILY, "vae") | {
            "block_out_channels": VAE_CHANNELS, "layers_per_block": 1, "sample_size": recipe.picture_size,
            "down_block_types": ["DownEncoderBlock2D"] * len(VAE_CHANNELS),
            "up_block_types": ["UpDecoderBlock2D"] * len(VAE_CHANNELS),
        })
        text_encoder = tiny_text_encoder(FAMILY, 0, tokenizer)
    return ModelComponents(FAMILY, unet, vae, [text_encoder], [tokenizer], source="toy-world")


def training_scenes(recipe: Recipe = RECIPE) -> list[Scene]:
    """The pool the UNet trains on: every world colour, shape, size, position and background."""
    return sample_scenes(recipe.pool, seed=recipe.seed)


def vae_scenes(recipe: Recipe = RECIPE) -> list[Scene]:
    """The pool the VAE fits: every colour, the held-out one too. A real SD VAE reconstructs
    colours its UNet never drew; one fitted on the world's colours only decodes magenta as red, and
    no LoRA could then teach it."""
    return sample_scenes(recipe.pool, seed=recipe.seed + 4, colours=tuple(Colour))


def pictures_tensor(scenes: list[Scene], size: int) -> torch.Tensor:
    """Scenes drawn as a float batch in [-1, 1], as the VAE takes them."""
    arrays = np.stack([np.asarray(draw(scene, size), dtype=np.float32) for scene in scenes])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


def train_vae(vae: AutoencoderKL, pictures: torch.Tensor, recipe: Recipe, progress: Progress,
              steps: int | None = None) -> None:
    """Fit the VAE as an autoencoder on the posterior means, with noise on the latents (then
    `calibrate_latents`)."""
    steps = recipe.vae_steps if steps is None else steps
    generator = torch.Generator().manual_seed(recipe.seed + 1)
    parameters = [p for name, p in vae.named_parameters() if not name.startswith("quant_conv")] + [
        vae.quant_conv.weight, vae.quant_conv.bias]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.vae_lr, weight_decay=0.0)
    vae.train()
    for step, lr in _schedule(steps, recipe.vae_lr, recipe.warmup_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = pictures[torch.randint(len(pictures), (recipe.vae_batch,), generator=generator)]
        means = _latent_means(vae, batch)
        noise = torch.randn(means.shape, generator=generator) * recipe.vae_latent_noise * means.detach().std()
        reconstruction = vae.decode(means + noise).sample
        loss = F.mse_loss(reconstruction, batch) + 1e-4 * means.pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress("vae", step, steps, loss.item())
    vae.eval()


def calibrate_latents(vae: AutoencoderKL, pictures: torch.Tensor) -> None:
    """Give the fitted VAE's latents SD1's spread (std 1 after the family's scale factor) and an almost
    deterministic posterior, as a trained SD VAE has."""
    with torch.no_grad():
        spread = torch.cat([_latent_means(vae, chunk) for chunk in pictures.split(256)]).std().item()
        gain = 1.0 / (spread * SPECS[FAMILY].latent_scale)
        channels = vae.config.latent_channels
        vae.quant_conv.weight[:channels] *= gain
        vae.quant_conv.bias[:channels] *= gain
        vae.quant_conv.weight[channels:] = 0.0
        vae.quant_conv.bias[channels:] = -10.0
        vae.post_quant_conv.weight /= gain


def _latent_means(vae: AutoencoderKL, pictures: torch.Tensor) -> torch.Tensor:
    moments = vae.quant_conv(vae.encoder(pictures))
    return moments[:, : vae.config.latent_channels]


def encode_pool(vae: AutoencoderKL, pictures: torch.Tensor) -> torch.Tensor:
    """The scaled latents the UNet trains on (posterior means; the posterior is almost a point)."""
    with torch.no_grad():
        latents = [vae.encode(chunk).latent_dist.mean for chunk in pictures.split(256)]
    return torch.cat(latents) * SPECS[FAMILY].latent_scale


def partial_caption(scene: Scene, rng: np.random.Generator, keep: float) -> str:
    """The caption with each of size, colour, shape and position kept with probability `keep`
    (at least one kept): "red", "a small circle", "a red square on the left"."""
    while True:
        kept = rng.random(4) < keep
        if kept.any():
            break
    words = [word for word, shown in zip((scene.size.value, scene.colour.value, scene.shape.value), kept[:3],
                                         strict=True) if shown]
    text = " ".join(words)
    if len(words) > 1 or kept[2]:
        text = "a " + text
    if kept[3]:
        text = f"{text} {POSITION_PHRASE[scene.position]}".strip()
    return text


def train_denoiser(components: ModelComponents, latents: torch.Tensor | _EncodedOnDemand, scenes: list[Scene],
                   recipe: Recipe, progress: Progress, steps: int | None = None) -> None:
    """UNet and text encoder on SD1's epsilon objective, captions dropped now and then, shortened
    other times."""
    steps = recipe.unet_steps if steps is None else steps
    unet, text_encoder, tokenizer = components.unet, components.text_encoders[0], components.tokenizers[0]
    scheduler = noise_scheduler(False)
    generator = torch.Generator().manual_seed(recipe.seed + 2)
    words = np.random.default_rng(recipe.seed + 3)
    optimizer = torch.optim.AdamW([
        {"params": list(unet.parameters()), "lr": recipe.unet_lr},
        {"params": list(text_encoder.parameters()), "lr": recipe.text_lr},
    ], weight_decay=0.0)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    unet.train()
    text_encoder.train()
    for step, factor in _schedule(steps, 1.0, recipe.warmup_steps):
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * factor
        picked = torch.randint(len(latents), (recipe.unet_batch,), generator=generator)
        dropped = torch.rand(recipe.unet_batch, generator=generator) < recipe.caption_dropout
        texts = ["" if drop else caption(scenes[index]) if words.random() >= recipe.partial_captions
                 else partial_caption(scenes[index], words, recipe.keep_word)
                 for index, drop in zip(picked.tolist(), dropped.tolist(), strict=True)]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        clean = latents[picked]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (recipe.unet_batch,), generator=generator)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        context = text_encoder(ids)[0]
        loss = F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=context).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], 1.0)
        optimizer.step()
        progress("unet", step, steps, loss.item())
    unet.eval()
    text_encoder.eval()


def _schedule(steps: int, peak: float, warmup: int) -> Iterator[tuple[int, float]]:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    for step in range(1, steps + 1):
        if step <= warmup:
            yield step, peak * step / warmup
        else:
            done = (step - warmup) / max(1, steps - warmup)
            yield step, peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))


def fingerprint(module: torch.nn.Module) -> float:
    """A number that moves with every weight: their sum of squares."""
    return float(sum(p.detach().double().pow(2).sum() for p in module.parameters()))


def train_toy_world(recipe: Recipe = RECIPE, progress: Progress | None = None) -> ModelComponents:
    """The whole recipe: the trained components (float32)."""
    progress = progress or (lambda *_: None)
    torch.manual_seed(recipe.seed)
    components = build_toy_components(recipe)
    vae_pictures = pictures_tensor(vae_scenes(recipe), recipe.picture_size)
    train_vae(components.vae, vae_pictures, recipe, progress)
    calibrate_latents(components.vae, vae_pictures)
    components.vae.requires_grad_(False)
    scenes = training_scenes(recipe)
    pictures = pictures_tensor(scenes, recipe.picture_size)
    train_denoiser(components, encode_pool(components.vae, pictures), scenes, recipe, progress)
    for part in (components.unet, components.vae, *components.text_encoders):
        part.requires_grad_(False)
    return components


def replay_fingerprints(recipe: Recipe = RECIPE, vae: AutoencoderKL | None = None) -> dict[str, float]:
    """The fingerprints after the first `fingerprint_steps` of each stage; the UNet stage starts
    from `vae` (the committed one) so that it needs not the whole VAE stage. The VAE's is taken before
    `calibrate_latents`, which encodes every picture of the pool (half a minute on one core)."""
    torch.manual_seed(recipe.seed)
    components = build_toy_components(recipe)
    quiet: Progress = lambda *_: None  # noqa: E731
    train_vae(components.vae, pictures_tensor(vae_scenes(recipe), recipe.picture_size), recipe, quiet,
              steps=recipe.fingerprint_steps)
    found = {"vae": fingerprint(components.vae)}
    scenes = training_scenes(recipe)
    pictures = pictures_tensor(scenes, recipe.picture_size)
    latents = _EncodedOnDemand(vae if vae is not None else components.vae, pictures)
    train_denoiser(components, latents, scenes, recipe, quiet, steps=recipe.fingerprint_steps)
    found["unet"] = fingerprint(components.unet)
    found["text_encoder"] = fingerprint(components.text_encoders[0])
    return found


class _EncodedOnDemand:
    """`encode_pool(vae, pictures)` for the few steps of a replay: each picture is encoded when a batch
    first takes it (a few hundred of the pool's thousands), with the same VAE and scale."""

    def __init__(self, vae: AutoencoderKL, pictures: torch.Tensor):
        self.vae, self.pictures = vae, pictures
        self.encoded: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.pictures)

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        missing = sorted(set(indices.tolist()) - self.encoded.keys())
        if missing:
            self.encoded |= dict(zip(missing, encode_pool(self.vae, self.pictures[missing]), strict=True))
        return torch.stack([self.encoded[index] for index in indices.tolist()])


def recipe_record(recipe: Recipe, files: dict[str, Path], fingerprints: dict[str, float], **measured) -> dict:
    return {"recipe": asdict(recipe), "sha256": {name: file_digest(path) for name, path in files.items()},
            "fingerprints": fingerprints, **measured}


def read_record(folder: Path = FILES) -> dict:
    return json.loads((folder / RECIPE_NAME).read_text())
