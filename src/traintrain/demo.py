"""The demo job: a tiny SD1 model and synthetic captioned images, a LoRA trained on them, and a
before/after picture rendered by diffusers with the LoRA loaded through its own loader.

Everything is made here, offline, so a new machine can check its set-up in about two minutes.
The tiny model's UNet and text encoder have random weights; only its VAE is fitted to the demo
pictures so that they can be read. Before training, the model draws random blotches; after, the
same seeds draw the shapes of the "target" column (each training image as this VAE reproduces it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from traintrain.choices import NetworkType, Precision
from traintrain.config import TrainConfig
from traintrain.fileio import atomic_path, write_text_atomic
from traintrain.training.events import Message, Reporter, ignore

TRIGGER = "ttdemo"
SHAPES = [
    ("red circle", (220, 40, 40), "ellipse", (250, 240, 200)),
    ("blue square", (40, 70, 220), "rectangle", (240, 240, 240)),
    ("green triangle", (40, 170, 60), "triangle", (30, 30, 40)),
    ("yellow circle", (240, 210, 40), "ellipse", (60, 40, 120)),
]
SIZE = 64
DEFAULT_STEPS = 1000
CELL = 128  # pixels per picture in before_after.png (the 64 px renders are enlarged)
VAE_FIT_STEPS = 150


@dataclass
class DemoResult:
    lora_path: Path
    image_path: Path
    losses: list[float]


def draw_shape(color, kind: str, background, size: int = SIZE, offset: int = 0) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    margin = size // 5 + offset
    box = (margin, margin, size - margin + offset // 2, size - margin)
    if kind == "ellipse":
        draw.ellipse(box, fill=color)
    elif kind == "rectangle":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([(size // 2, margin), (margin, size - margin), (size - margin, size - margin)], fill=color)
    return image


def write_demo_images(folder: Path) -> list[tuple[Path, str]]:
    """Two slightly different images per shape, each with a caption file."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (name, color, kind, background) in enumerate(SHAPES):
        for variant in range(2):
            path = folder / f"{index:02d}_{variant}.png"
            with atomic_path(path) as tmp:
                draw_shape(color, kind, background, offset=variant * 6).save(tmp, format="PNG")
            caption = f"a {name}"
            write_text_atomic(path.with_suffix(".txt"), caption)
            written.append((path, f"{TRIGGER}, {caption}"))
    return written


def tiny_model_with_fitted_vae(images, steps: int = VAE_FIT_STEPS):
    """A tiny SD1 whose VAE reproduces the demo pictures.

    A random decoder turns any latent into coloured noise, so no picture could show what the LoRA
    learned. A short autoencoder fit (latent std kept at 1 after the SD1 scale, as in a trained
    VAE) makes the pictures readable; the UNet stays random and only the LoRA learns the shapes.
    """
    from traintrain.data.dataset import image_to_tensor
    from traintrain.models.families import Family
    from traintrain.models.tiny import build_tiny_components

    components = build_tiny_components(Family.SD1, seed=0)
    vae = components.vae.train().requires_grad_(True)
    pixels = torch.stack([image_to_tensor(Image.open(path).convert("RGB")) for path, _ in images])
    optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    scale = components.spec.latent_scale
    for _ in range(steps):
        batch = pixels[torch.randperm(len(pixels), generator=generator)[:4]]
        latent = vae.encode(batch).latent_dist.mean
        loss = torch.nn.functional.mse_loss(vae.decode(latent).sample, batch) + 0.1 * ((latent * scale).std() - 1) ** 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vae.eval().requires_grad_(False)
    return components


def demo_config(model: Path, data: Path, steps: int) -> TrainConfig:
    return TrainConfig(
        mode="LoRA", model=str(model), lora_data_directory=str(data), lora_trigger_word=TRIGGER,
        network_type=NetworkType.C3LIER, network_rank=16, network_alpha=16, train_iterations=steps, train_batch_size=4,
        train_learning_rate=3e-3, image_size=[SIZE, SIZE], image_buckets_step=64, image_min_length=64,
        train_model_precision=Precision.FP32, save_precision=Precision.FP32, train_seed=0, train_snr_gamma=5,
        save_lora_name="demo", save_overwrite=True,
    )


def run_demo(out: Path, steps: int | None = None, report: Reporter = ignore) -> DemoResult:
    from traintrain.jobs.runner import run_job
    from traintrain.models.tiny import write_tiny_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = out / "tiny-sd1.safetensors"
    images = write_demo_images(out / "images")
    if not model.exists():
        report(Message("demo: fitting the tiny model's VAE to the demo pictures (about 30 s)"))
        write_tiny_model("sd1", "single-file", model, components=tiny_model_with_fitted_vae(images))
    report(Message(f"demo: tiny SD1 model {model}, {len(images)} images in {out / 'images'}"))
    config = demo_config(model, out / "images", steps or DEFAULT_STEPS)
    result = run_job(config, output_dir=out, report=report)
    picture = out / "before_after.png"
    render_before_after(model, result.path, images, picture, report)
    return DemoResult(result.path, picture, result.losses)


def render_before_after(model: Path, lora: Path, images, target: Path, report: Reporter) -> None:
    """Rows: one per shape. Columns: training image, target (through the VAE), before, after."""
    from traintrain.rendering import build_pipeline, generate, labelled_grid

    pipe = build_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    prompts = [caption for _, caption in images[::2]]
    sources = [Image.open(path).convert("RGB") for path, _ in images[::2]]
    targets = [_through_vae(pipe.vae, img) for img in sources]
    report(Message("rendering before/after with diffusers"))
    before = generate(pipe, prompts, SIZE, seed=1)
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="demo")
    after = generate(pipe, prompts, SIZE, seed=1)
    report(
        Message(
            f"mean pixel distance to the targets: before {_distance(before, targets):.1f}, "
            f"after {_distance(after, targets):.1f}"
        )
    )
    columns = [
        [image.resize((CELL, CELL), Image.Resampling.NEAREST) for image in column]
        for column in (sources, targets, before, after)
    ]
    grid = labelled_grid(columns, ["image", "target", "before", "after"])
    with atomic_path(target) as tmp:
        grid.save(tmp, format="PNG")


def _distance(images, targets) -> float:
    """Mean absolute pixel difference (0-255) between generated pictures and their targets."""
    return float(
        np.mean(
            [
                np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean()
                for a, b in zip(images, targets, strict=False)
            ]
        )
    )


@torch.no_grad()
def _through_vae(vae, image: Image.Image) -> Image.Image:
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample[0]
    array = ((decoded.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).round().byte().numpy()
    return Image.fromarray(array)
