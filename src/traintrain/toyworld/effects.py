"""Every mode's effect on the toy-world model, measured as a user sees it: in judged pictures.

Each function trains one job through `run_job` (as the CLI and the UI do), loads the saved file
onto the toy model as a consumer would, draws prompts on held-out seeds with and without it, and
returns the judge's numbers. `benchmarks/effects.py` prints them as a table; the tests hold them
to margins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from traintrain.config import TrainConfig
from traintrain.jobs.runner import run_job
from traintrain.modes.common import prompt_only_spec
from traintrain.modes.ileco import ileco_spec
from traintrain.networks.kohya_format import load_lora
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from traintrain.toyworld.evaluate import HELD_OUT_SEEDS, world_prompts
from traintrain.toyworld.judge import Verdict, judge
from traintrain.toyworld.release import load_toy_model, toy_model_path
from traintrain.toyworld.sampling import draw_prompts
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
SHOWN = 4  # pictures of each kind an Effect keeps
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
    pictures: dict[str, list[Image.Image]] = field(default_factory=dict)  # label -> the first SHOWN drawn
    prompts: list[str] = field(default_factory=list)  # of those pictures


def with_lora(components, config: TrainConfig, path: Path, multiplier: float = 1.0) -> AdapterNetwork:
    """The saved file hooked into the toy model, as a consumer loads it (remove() takes it out).
    LoRA mode (and iLECO with network_train_text_encoder) train the text encoder too; the sliders
    save the UNet's part only."""
    spec = (NetworkSpec.from_config(config) if config.mode == "LoRA" else ileco_spec(config) if config.mode == "iLECO"
            else prompt_only_spec(config))
    network = AdapterNetwork(components, spec)
    network.load_tensors(load_lora(path)[0])
    network.apply()
    network.set_multiplier(multiplier)
    return network


def _judged(components, scenes: Sequence[Scene], seeds: Sequence[int], prompts: Sequence[str] | None = None,
            shown: list[Image.Image] | None = None, show: Sequence[int] | None = None) -> list[Verdict]:
    """The judge's verdicts; the pictures at `show` (else the first SHOWN) are added to `shown` when given
    (the demo shows them)."""
    pictures = draw_prompts(components, list(prompts or [caption(s) for s in scenes]), list(seeds))
    if shown is not None:
        shown += [pictures[index] for index in (range(len(pictures))[:SHOWN] if show is None else show)]
    return [judge(picture) for picture in pictures]


def one_per_colour(scenes: Sequence[Scene]) -> list[int]:
    """SHOWN indices of `scenes`, the first of each colour before any second one: a picture of "other prompts"
    shows the world's colours, not the first few prompts, which share one."""
    colours: dict = {}
    for index, scene in enumerate(scenes):
        colours.setdefault(scene.colour, index)
    firsts = list(colours.values())
    return (firsts + [index for index in range(len(scenes)) if index not in firsts])[:SHOWN]


def _fraction(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0


def lora_concept(workdir: Path, components=None, *, images: int = 48, regularization: int = 48, steps: int = 600,
                 lr: float = 3e-3, seeds: int = 60, **options) -> Effect:
    """LoRA mode teaches magenta, a colour the toy world never saw, under a trigger word.

    `regularization` pictures of the world go in the same folder (in `world/`), as kohya's
    regularization images, with their own captions, a third of them with an empty one: they hold
    the other prompts where they were, and the empty prompt too. Without the empty ones the
    unconditional prediction drifts toward magenta, and classifier-free guidance then pushes every
    other colour away from it (red drawn yellow, blue drawn cyan).

    Numbers: `trigger` is the fraction of pictures of "a {size} zqmg {shape} {position}" judged
    magenta; `before` the same without the LoRA; `elsewhere_changed` the fraction of world prompts
    whose judged colour changes when the LoRA is loaded.
    """
    components = components or load_toy_model()
    data = Path(workdir) / "magenta"
    scenes = sample_scenes(images, seed=11, colours=[HELD_OUT_COLOUR])
    write_dataset(data, scenes, captions=[caption(s).replace(HELD_OUT_COLOUR.value, TRIGGER) for s in scenes])
    if regularization:
        world = sample_scenes(regularization, seed=13)
        texts = ["" if index % 3 == 2 else caption(scene) for index, scene in enumerate(world)]
        write_dataset(data / "world", world, captions=texts)
    options = dict(network_rank=8, network_alpha=8, train_batch_size=4) | options
    config = job(mode="LoRA", lora_data_directory=str(data), train_iterations=steps, train_learning_rate=lr,
                 save_lora_name="concept", **options)
    path = run_job(config, output_dir=Path(workdir) / "out").path
    asked = [Scene(s.shape, HELD_OUT_COLOUR, s.size, s.position) for s in sample_scenes(seeds, seed=12, jitter=False)]
    prompts = [caption(s).replace(HELD_OUT_COLOUR.value, TRIGGER) for s in asked]
    others = world_prompts()[:seeds]
    shown_others = one_per_colour(others)
    seed_list = list(HELD_OUT_SEEDS[: len(asked)])
    effect = Effect("LoRA", path=path, prompts=prompts[:SHOWN] + [caption(others[i]) for i in shown_others],
                    pictures={"before": [], "after": []})
    before = _judged(components, asked, seed_list, prompts, effect.pictures["before"])
    plain = _judged(components, others, HELD_OUT_SEEDS[: len(others)], shown=effect.pictures["before"],
                    show=shown_others)
    network = with_lora(components, config, path)
    try:
        after = _judged(components, asked, seed_list, prompts, effect.pictures["after"])
        others_after = _judged(components, others, HELD_OUT_SEEDS[: len(others)], shown=effect.pictures["after"],
                               show=shown_others)
    finally:
        network.remove()
    effect.numbers = {
        "trigger": _fraction(v.colour is HELD_OUT_COLOUR for v in after),
        "before": _fraction(v.colour is HELD_OUT_COLOUR for v in before),
        "elsewhere_changed": _fraction(a.colour != b.colour for a, b in zip(plain, others_after, strict=True)),
    }
    return effect


def ileco(workdir: Path, components=None, *, original: Colour = Colour.RED, target: Colour | None = Colour.BLUE,
          steps: int = 600, repeats: int = 2, **options) -> Effect:
    """iLECO "red" -> "blue" (or erase red when `target` is None), judged on held-out seeds.

    Red -> blue trains the cross-attention's value projections alone (CrossAttentionV, batch 4, lr 3e-2):
    on every training seed tried it moved red further than all of the cross-attention did and changed
    other colours a quarter as often (README). Erasing keeps all of the cross-attention (batch 2, lr
    2e-2): its value projections alone erased less.

    Numbers: `moved` the fraction of red prompts now judged blue (erase: judged not red or no
    shape at all); `before` the same without the LoRA; `elsewhere_changed` the fraction of
    prompts of the other colours whose judged colour changes.
    """
    components = components or load_toy_model()
    target_name = target.value if target else ""
    recipe = (dict(network_element="CrossAttentionV", train_batch_size=4, train_learning_rate=3e-2) if target
              else dict(network_element="CrossAttention", train_batch_size=2, train_learning_rate=2e-2))
    options = dict(network_rank=4, network_alpha=4, **recipe) | options
    config = job(mode="iLECO", original_prompt=original.value, target_prompt=target_name, train_iterations=steps,
                 save_lora_name=f"ileco-{original.value}-{target_name or 'erase'}", **options)
    path = run_job(config, output_dir=Path(workdir) / "out").path
    reds = [scene for scene in world_prompts() if scene.colour is original] * repeats  # each on its own seed
    others = [scene for scene in world_prompts() if scene.colour is not original][: 2 * len(reds)]

    def moved(verdicts) -> float:
        if target is None:
            return _fraction(v.colour is not original for v in verdicts)
        return _fraction(v.colour is target for v in verdicts)

    effect = Effect("iLECO" if target else "iLECO erase", path=path, prompts=[caption(s) for s in reds[:SHOWN]],
                    pictures={"before": [], "after": []})
    before = _judged(components, reds, HELD_OUT_SEEDS[: len(reds)], shown=effect.pictures["before"])
    plain = _judged(components, others, HELD_OUT_SEEDS[: len(others)])
    network = with_lora(components, config, path)
    try:
        after = _judged(components, reds, HELD_OUT_SEEDS[: len(reds)], shown=effect.pictures["after"])
        others_after = _judged(components, others, HELD_OUT_SEEDS[: len(others)])
    finally:
        network.remove()
    effect.numbers = {
        "moved": moved(after), "before": moved(before),
        "elsewhere_changed": _fraction(a.colour != b.colour for a, b in zip(plain, others_after, strict=True)),
    }
    return effect


EXTENT_TOLERANCE = 0.02  # of the picture side: the judge's extent of one shape varies this much by itself


SLIDER_ORIGINAL = Scene(Shape.CIRCLE, Colour.GREEN, Size.SMALL, Position.CENTER, Background.WHITE)


def slider_pair(folder: Path) -> tuple[Path, Path]:
    """The pair of every slider job: SLIDER_ORIGINAL, a small green circle in the center, and the
    same circle large."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "original.png", folder / "original_target.png"  # Multi-ADDifT's X.png, X_target.png
    for size, path in zip((Size.SMALL, Size.LARGE), paths, strict=True):
        draw(replace(SLIDER_ORIGINAL, size=size)).save(path)
    return paths


# Tuned on the toy world (README): Difference's copier learns fast at 1e-2 and its second pass is
# gentler, as the original's Difference_Use2ndPass preset has it; ADDifT at 1e-3 already bends colours.
SLIDER_LR = {"Difference": 1e-2, "ADDifT": 5e-4, "Multi-ADDifT": 5e-4}
SECOND_PASS_LR = 1e-3


def slider_job(mode: str, folder: Path, steps: int, lr: float | None = None, **options) -> TrainConfig:
    original, target = slider_pair(folder)
    images = (dict(lora_data_directory=str(folder)) if mode == "Multi-ADDifT"
              else dict(original_image=str(original), target_image=str(target)))
    if mode == "Difference":
        options = dict(diff_save_1st_pass=True,  # the copier, checked on its own
                       use_2nd_pass_settings=True, second_pass={"train_learning_rate": SECOND_PASS_LR}) | options
    lr = SLIDER_LR.get(mode, 1e-3) if lr is None else lr
    options = dict(network_rank=4, network_alpha=4, train_batch_size=2) | options
    return job(mode=mode, train_iterations=steps, train_learning_rate=lr, save_lora_name=f"slider-{mode}",
               **images, **options)


def difference_slider(workdir: Path, components=None, *, mode: str = "Difference", steps: int = 400,
                      lr: float | None = None, seeds: int = 30, **options) -> Effect:
    """Original a small circle, Target the same circle large: a slider over size, in Difference,
    ADDifT or Multi-ADDifT mode, tried on world prompts that leave the size open.

    Numbers: `monotonic` the fraction of seeds whose judged extent grows with the multiplier over
    SLIDER_MULTIPLIERS (each step at least -EXTENT_TOLERANCE); `colour_kept` and `position_kept`
    the fractions of seeds whose colour and position stay those at 0 at every multiplier;
    `extent_-1` ... `extent_1` the mean extents. Difference also: `copier_reproduces`, the fraction
    of held-out seeds that the copier alone draws as the Original (small green circle in the
    center) from the training prompt, and `copier_before`, the same for the bare model.
    """
    components = components or load_toy_model()
    config = slider_job(mode, Path(workdir) / "pair", steps, lr, **options)
    path = run_job(config, output_dir=Path(workdir) / "out").path
    asked = world_prompts(colours=WORLD_COLOURS)[::3][:seeds]
    prompts = [caption(scene, size=False) for scene in asked]
    seed_list = list(HELD_OUT_SEEDS[: len(asked)])
    by_multiplier = {}
    effect = Effect(mode, path=path, prompts=prompts[:SHOWN])
    network = with_lora(components, config.for_second_pass(), path)  # Difference's result is pass 2
    try:
        for multiplier in SLIDER_MULTIPLIERS:
            network.set_multiplier(multiplier)
            shown = effect.pictures.setdefault(f"{multiplier:g}", [])
            by_multiplier[multiplier] = _judged(components, asked, seed_list, prompts, shown=shown)
    finally:
        network.remove()
    rows = list(zip(*(by_multiplier[m] for m in SLIDER_MULTIPLIERS), strict=True))
    middle = SLIDER_MULTIPLIERS.index(0.0)
    numbers = {
        "monotonic": _fraction(all(b.extent >= a.extent - EXTENT_TOLERANCE for a, b in zip(row[:-1], row[1:],
                                                                                         strict=True))
                               for row in rows),
        "colour_kept": _fraction(all(v.colour == row[middle].colour for v in row) for row in rows),
        "position_kept": _fraction(all(v.position == row[middle].position for v in row) for row in rows),
    }
    for multiplier in SLIDER_MULTIPLIERS:
        numbers[f"extent_{multiplier:g}"] = sum(v.extent for v in by_multiplier[multiplier]) / len(asked)
    if mode == "Difference":
        numbers |= copier_check(components, config, path.with_name(f"{path.stem}_copy{path.suffix}"), seeds)
    effect.numbers = numbers
    return effect


def copier_check(components, config: TrainConfig, copier: Path, seeds: int) -> dict[str, float]:
    """How often the copier alone draws the Original from the training prompt, and the bare model."""
    seed_list = list(HELD_OUT_SEEDS[: seeds])
    prompts = [config.original_prompt] * seeds
    wanted = (SLIDER_ORIGINAL.colour, SLIDER_ORIGINAL.shape, SLIDER_ORIGINAL.size, SLIDER_ORIGINAL.position)

    def reproduced(verdicts) -> float:
        return _fraction((v.colour, v.shape, v.size, v.position) == wanted for v in verdicts)

    before = _judged(components, [], seed_list, prompts)
    network = with_lora(components, config, copier)
    try:
        after = _judged(components, [], seed_list, prompts)
    finally:
        network.remove()
    return {"copier_reproduces": reproduced(after), "copier_before": reproduced(before)}
