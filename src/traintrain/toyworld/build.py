"""Build the toy-world model from its recipe: `python -m traintrain.toyworld.build OUT_FOLDER`.

Writes the single file (float16, with its tokenizer folder beside it) and `recipe.json`: the
recipe, the files' checksums, the fingerprints a reproduction check replays, the minutes it took
and the judge's accuracy of the VAE's reconstructions. Runs in two CPU threads, so the result does
not depend on the machine's core count (CI has two too).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from traintrain.fileio import write_text_atomic
from traintrain.models.tiny import write_tiny_model
from traintrain.toyworld import model
from traintrain.toyworld.judge import accuracy
from traintrain.toyworld.scenes import sample_scenes

HELD_OUT_SEED = 1_000_003  # scenes none of the training pool's
BUILD_THREADS = 2  # fixed, so the float sums (and the files) do not depend on the machine


def reconstruction_accuracy(vae, n: int = 240) -> dict[str, float]:
    """The judge's accuracy on held-out pictures after encoding and decoding."""
    scenes = sample_scenes(n, seed=HELD_OUT_SEED)
    pictures = model.pictures_tensor(scenes, model.RECIPE.picture_size)
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pictures).latent_dist.mean).sample
    arrays = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return accuracy(list(arrays), scenes)


def build(out: Path, recipe: model.Recipe = model.RECIPE, log=print) -> dict:
    torch.set_num_threads(BUILD_THREADS)
    started = time.time()

    def progress(stage: str, step: int, steps: int, loss: float) -> None:
        if step % 100 == 0 or step == steps:
            log(f"{stage} {step}/{steps} loss {loss:.4f} ({(time.time() - started) / 60:.1f} min)")

    components = model.train_toy_world(recipe, progress)
    vae_accuracy = reconstruction_accuracy(components.vae)
    log(f"VAE reconstructions judged: {vae_accuracy}")
    minutes = (time.time() - started) / 60
    for part in (components.unet, components.vae, *components.text_encoders):
        part.half()
    out.mkdir(parents=True, exist_ok=True)
    path = write_tiny_model("sd1", "single-file", out / model.MODEL_NAME, components=components)
    fingerprints = model.replay_fingerprints(recipe, vae=components.vae.float())
    files = {model.MODEL_NAME: path, **{
        str(file.relative_to(out)): file for file in sorted(path.with_name(path.stem + ".tokenizer").rglob("*"))
        if file.is_file()
    }}
    record = model.recipe_record(recipe, files, fingerprints, build_minutes=round(minutes, 1),
                                 vae_reconstruction_accuracy=vae_accuracy)
    write_text_atomic(out / model.RECIPE_NAME, json.dumps(record, indent=2) + "\n")
    return record


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    build(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
