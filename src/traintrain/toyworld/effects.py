"""Every mode's effect on the toy-world model, measured as a user sees it: in judged pictures.

Each function trains one job through `run_job` (as the CLI and the UI do), loads the saved file
onto the toy model as a consumer would, draws prompts on held-out seeds with and without it, and
returns the judge's numbers. `benchmarks/effects.py` prints them as a table; the tests hold them
to margins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from traintrain.config import TrainConfig
from traintrain.jobs.runner import run_job
from traintrain.modes.common import prompt_only_spec
from traintrain.networks.kohya_format import load_lora
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from traintrain.toyworld.evaluate import HELD_OUT_SEEDS, draw_and_judge, world_prompts
from traintrain.toyworld.release import load_toy_model, toy_model_path
from traintrain.toyworld.scenes import (
    HELD_OUT_COLOUR,
    WORLD_COLOURS,
    Background,
    Colour,
    Position,
    Scene,
    Shape,
    Size,
    caption,
    draw,
    sample_scenes,
    write_dataset,
)

TRIGGER = "zqmg"  # a word the toy world never saw: the tokenizer cuts it in bytes
SLIDER_MULTIPLIERS = (-1.0, -0.5, 0.0, 0.5, 1.0)
COMMON = dict(train_model_precision="fp32", save_precision="fp32", image_size=[64, 64], image_buckets_step=64,
              image_min_length=64, train_seed=7, model=str(toy_model_path()))


def job(**values) -> TrainConfig:
    """A job on the toy model, checked as the CLI checks a settings file."""
    return TrainConfig.from_json_dict({**COMMON, **values}, source="the effects benchmark")


@dataclass
class Effect:
    """One mode's numbers: name -> value (fractions unless named otherwise), and the LoRA file."""

    mode: str
    numbers: dict[str, float] = field(default_factory=dict)
    path: Path | None = None


def with_lora(components, config: TrainConfig, path: Path, multiplier: float = 1.0) -> AdapterNetwork:
    """The saved file hooked into the toy model, as a consumer loads it (remove() takes it out).
    Only LoRA mode trains the text encoder here; the prompt modes and sliders save the UNet's part."""
    spec = NetworkSpec.from_config(config) if config.mode == "LoRA" else prompt_only_spec(config)
    network = AdapterNetwork(components, spec)
    network.load_tensors(load_lora(path)[0])
    network.apply()
    network.set_multiplier(multiplier)
    return network


def _judged(components, scenes: Sequence[Scene], seeds: Sequence[int], prompts: Sequence[str] | None = None):
    return draw_and_judge(components, list(prompts or [caption(s) for s in scenes]), list(seeds))


def _fraction(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0


def lora_concept(workdir: Path, components=None, *, images: int = 48, steps: int = 600, lr: float = 3e-3,
                 seeds: int = 60) -> Effect:
    """LoRA mode teaches magenta, a colour the toy world never saw, under a trigger word.

    Numbers: `trigger` is the fraction of pictures of "a {size} zqmg {shape} {position}" judged
    magenta; `before` the same without the LoRA; `elsewhere_changed` the fraction of world prompts
    whose judged colour changes when the LoRA is loaded.
    """
    components = components or load_toy_model()
    data = Path(workdir) / "magenta"
    scenes = sample_scenes(images, seed=11, colours=[HELD_OUT_COLOUR])
    write_dataset(data, scenes, captions=[caption(s).replace(HELD_OUT_COLOUR.value, TRIGGER) for s in scenes])
    config = job(mode="LoRA", lora_data_directory=str(data), network_rank=8, network_alpha=8,
                 train_iterations=steps, train_learning_rate=lr, train_batch_size=4, save_lora_name="concept")
    path = run_job(config, output_dir=Path(workdir) / "out").path
    asked = [Scene(s.shape, HELD_OUT_COLOUR, s.size, s.position) for s in sample_scenes(seeds, seed=12, jitter=False)]
    prompts = [caption(s).replace(HELD_OUT_COLOUR.value, TRIGGER) for s in asked]
    others = world_prompts()[:seeds]
    seed_list = list(HELD_OUT_SEEDS[: len(asked)])
    before = _judged(components, asked, seed_list, prompts)
    plain = _judged(components, others, HELD_OUT_SEEDS[: len(others)])
    network = with_lora(components, config, path)
    try:
        after = _judged(components, asked, seed_list, prompts)
        others_after = _judged(components, others, HELD_OUT_SEEDS[: len(others)])
    finally:
        network.remove()
    return Effect("LoRA", {
        "trigger": _fraction(v.colour is HELD_OUT_COLOUR for v in after),
        "before": _fraction(v.colour is HELD_OUT_COLOUR for v in before),
        "elsewhere_changed": _fraction(a.colour != b.colour for a, b in zip(plain, others_after, strict=True)),
    }, path)


def ileco(workdir: Path, components=None, *, original: Colour = Colour.RED, target: Colour | None = Colour.BLUE,
          steps: int = 300, **options) -> Effect:
    """iLECO "red" -> "blue" (or erase red when `target` is None), judged on held-out seeds.

    Numbers: `moved` the fraction of red prompts now judged blue (erase: judged not red or no
    shape at all); `before` the same without the LoRA; `elsewhere_changed` the fraction of
    prompts of the other colours whose judged colour changes.
    """
    components = components or load_toy_model()
    target_name = target.value if target else ""
    config = job(mode="iLECO", original_prompt=original.value, target_prompt=target_name, network_rank=4,
                 network_alpha=4, network_element="CrossAttention", train_iterations=steps, train_learning_rate=3e-3,
                 train_batch_size=2, save_lora_name=f"ileco-{original.value}-{target_name or 'erase'}", **options)
    path = run_job(config, output_dir=Path(workdir) / "out").path
    reds = [scene for scene in world_prompts() if scene.colour is original]
    others = [scene for scene in world_prompts() if scene.colour is not original][: 2 * len(reds)]

    def moved(verdicts) -> float:
        if target is None:
            return _fraction(v.colour is not original for v in verdicts)
        return _fraction(v.colour is target for v in verdicts)

    before = _judged(components, reds, HELD_OUT_SEEDS[: len(reds)])
    plain = _judged(components, others, HELD_OUT_SEEDS[: len(others)])
    network = with_lora(components, config, path)
    try:
        after = _judged(components, reds, HELD_OUT_SEEDS[: len(reds)])
        others_after = _judged(components, others, HELD_OUT_SEEDS[: len(others)])
    finally:
        network.remove()
    return Effect("iLECO" if target else "iLECO erase", {
        "moved": moved(after), "before": moved(before),
        "elsewhere_changed": _fraction(a.colour != b.colour for a, b in zip(plain, others_after, strict=True)),
    }, path)


def difference_slider(workdir: Path, components=None, *, mode: str = "Difference", steps: int = 400,
                      lr: float = 1e-2, seeds: int = 30) -> Effect:
    """Original a small circle, Target the same circle large: a slider over size.

    Numbers: `monotonic` the fraction of seeds whose judged extent grows with the multiplier over
    SLIDER_MULTIPLIERS; `colour_kept` and `position_kept` the fractions of pictures at every
    multiplier whose colour and position are those at 0; `extent_-1` ... `extent_1` the mean
    extents.
    """
    components = components or load_toy_model()
    folder = Path(workdir) / "pair"
    folder.mkdir(parents=True, exist_ok=True)
    small = Scene(Shape.CIRCLE, Colour.GREEN, Size.SMALL, Position.CENTER, Background.WHITE)
    large = Scene(Shape.CIRCLE, Colour.GREEN, Size.LARGE, Position.CENTER, Background.WHITE)
    draw(small).save(folder / "original.png")
    draw(large).save(folder / "target.png")
    config = job(mode=mode, original_image=str(folder / "original.png"), target_image=str(folder / "target.png"),
                 network_rank=4, network_alpha=4, train_iterations=steps, train_learning_rate=lr,
                 train_batch_size=2, save_lora_name=f"slider-{mode}")
    path = run_job(config, output_dir=Path(workdir) / "out").path
    asked = world_prompts(colours=WORLD_COLOURS)[::3][:seeds]
    seed_list = list(HELD_OUT_SEEDS[: len(asked)])
    by_multiplier = {}
    network = with_lora(components, config, path)
    try:
        for multiplier in SLIDER_MULTIPLIERS:
            network.set_multiplier(multiplier)
            by_multiplier[multiplier] = _judged(components, asked, seed_list)
    finally:
        network.remove()
    rows = list(zip(*(by_multiplier[m] for m in SLIDER_MULTIPLIERS), strict=True))
    middle = SLIDER_MULTIPLIERS.index(0.0)
    numbers = {
        "monotonic": _fraction(all(a.extent <= b.extent for a, b in zip(row[:-1], row[1:], strict=True))
                               for row in rows),
        "colour_kept": _fraction(all(v.colour == row[middle].colour for v in row) for row in rows),
        "position_kept": _fraction(all(v.position == row[middle].position for v in row) for row in rows),
    }
    for multiplier in SLIDER_MULTIPLIERS:
        numbers[f"extent_{multiplier:g}"] = sum(v.extent for v in by_multiplier[multiplier]) / len(asked)
    return Effect(mode, numbers, path)
