"""The demo: all three modes on the toy-world model, each effect shown in one picture and judged.

The toy-world model (committed, see toyworld/) follows prompts such as "a small red circle on
the left", so what a mode does can be seen and counted. The demo trains, through the same
`run_job` as the CLI and UI:
- LoRA mode: magenta, a colour the model never drew, under the trigger word "zqmg";
- iLECO: Original "red", Target "blue", from the two prompts alone;
- Difference: a small green circle and the same circle large, a size slider.
`demo.png` shows them before/after (the slider at five multipliers), with the judge's numbers in
the titles; the same numbers are reported as messages. About three minutes on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from traintrain.errors import UserError
from traintrain.fileio import atomic_path
from traintrain.training.events import Message, Reporter, ignore

CELL = 96  # pixels per picture in demo.png (the 64 px pictures are enlarged)
TITLE = 18  # the section title's height
LINE, LINE_CHAR = 15, 6  # a text line's height, a character's width (PIL's default font)
GAP = 12
# Fewer held-out seeds than benchmarks/effects.py, so the demo stays short; the numbers are of
# the same kind (benchmarks/effects.py gives the full table).
LORA_SEEDS, SLIDER_SEEDS, ILECO_REPEATS = 24, 12, 1


@dataclass
class DemoResult:
    image_path: Path
    lora_paths: dict[str, Path]  # mode -> its saved file
    numbers: dict[str, dict[str, float]] = field(default_factory=dict)


def run_demo(out: Path, steps: int | None = None, report: Reporter = ignore) -> DemoResult:
    """Train the three jobs in `out` and write `out/demo.png`; `steps` overrides each job's steps."""
    from traintrain.toyworld import effects
    from traintrain.toyworld.release import load_toy_model, toy_model_path

    if steps is not None and steps < 1:
        raise UserError(f"demo steps must be at least 1, not {steps}", "give 1 or more, or none for each mode's own")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    toy = load_toy_model()
    report(Message(f"demo: the toy-world model {toy_model_path()}; jobs and files in {out}"))
    steps_of: dict[str, Any] = {} if steps is None else {"steps": steps}
    measured = [
        ("LoRA", lambda: effects.lora_concept(out / "lora", toy, seeds=LORA_SEEDS, **steps_of)),
        ("iLECO", lambda: effects.ileco(out / "ileco", toy, repeats=ILECO_REPEATS, **steps_of)),
        ("Difference", lambda: effects.difference_slider(out / "difference", toy, seeds=SLIDER_SEEDS, **steps_of)),
    ]
    done = {}
    for name, measure in measured:
        report(Message(f"demo: training {name} on the toy world"))
        done[name] = measure()
        report(Message(f"demo: {name}: {summary(done[name])}"))
    picture = out / "demo.png"
    with atomic_path(picture) as tmp:
        sheet(done).save(tmp, format="PNG")
    paths = {name: effect.path for name, effect in done.items() if effect.path}
    return DemoResult(picture, paths, {name: effect.numbers for name, effect in done.items()})


def summary(effect) -> str:
    """The judge's numbers in words, as the sheet's titles and the messages give them."""
    n = effect.numbers
    if effect.mode == "LoRA":
        return (f"'zqmg' drawn magenta {n['trigger']:.0%} (before {n['before']:.0%}); "
                f"other prompts changed {n['elsewhere_changed']:.0%}")
    if effect.mode.startswith("iLECO"):
        return f"red prompts drawn blue {n['moved']:.0%} (before {n['before']:.0%}); other colours changed " \
               f"{n['elsewhere_changed']:.0%}"
    return (f"size grows with the multiplier on {n['monotonic']:.0%} of seeds; colour kept {n['colour_kept']:.0%}, "
            f"position kept {n['position_kept']:.0%}")


HEADINGS = {
    "LoRA": "LoRA: zqmg x4, others x4",
    "iLECO": "iLECO: red -> blue",
    "Difference": "Difference: small -> large",
}


def sheet(effects_by_name: dict) -> Image.Image:
    """The sections side by side: LoRA (before, after), iLECO (before, after), the slider at five
    multipliers; under them one line of the judge's numbers per mode."""
    sections = [_section(name, effect) for name, effect in effects_by_name.items()]
    lines = [f"{name}: {summary(effect)}" for name, effect in effects_by_name.items()]
    width = sum(s.width for s in sections) + GAP * (len(sections) - 1)
    height = max(s.height for s in sections)
    page = Image.new("RGB", (max(width, LINE_CHAR * max(map(len, lines)) + 8), height + GAP + LINE * len(lines)),
                     "white")
    left = 0
    for section in sections:
        page.paste(section, (left, 0))
        left += section.width + GAP
    pen = ImageDraw.Draw(page)
    for index, line in enumerate(lines):
        pen.text((4, height + GAP + index * LINE), line, fill="black")
    return page


def _section(name: str, effect) -> Image.Image:
    from traintrain.rendering import labelled_grid

    labels = list(effect.pictures)
    columns = [[p.resize((CELL, CELL), Image.Resampling.NEAREST) for p in effect.pictures[k]] for k in labels]
    grid = labelled_grid(columns, labels if name != "Difference" else [f"x {label}" for label in labels])
    section = Image.new("RGB", (grid.width, TITLE + grid.height), "white")
    ImageDraw.Draw(section).text((4, 3), HEADINGS.get(name, name), fill="black")
    section.paste(grid, (0, TITLE))
    return section
