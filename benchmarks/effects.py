"""Every mode's effect on the toy-world model, judged in pictures, printed as a table.

    python benchmarks/effects.py            # base model, LoRA concept, iLECO, erase, sliders
    python benchmarks/effects.py --json     # the same numbers as JSON
    python benchmarks/effects.py --only iLECO "iLECO once" "iLECO pool"   # iLECO's latent, three ways
    python benchmarks/effects.py --only iLECO --seed 8    # another training seed (the table's is 7)

Targets (issue 14): base colour accuracy >= 90 %; LoRA concept >= 80 % with <= 10 % change
elsewhere; iLECO red->blue >= 80 % with <= 10 % change on other colours; slider monotonic on
>= 90 % of seeds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from traintrain.toyworld import effects
from traintrain.toyworld.evaluate import prompt_following
from traintrain.toyworld.release import load_toy_model

TARGETS = [  # row, number, at least (>=) or at most (<=), value
    ("base", "colour", ">=", 0.9),
    ("LoRA", "trigger", ">=", 0.8),
    ("LoRA", "elsewhere_changed", "<=", 0.1),
    ("iLECO", "moved", ">=", 0.8),
    ("iLECO", "elsewhere_changed", "<=", 0.1),
    ("Difference", "monotonic", ">=", 0.9),
    ("ADDifT", "monotonic", ">=", 0.9),
    ("Multi-ADDifT", "monotonic", ">=", 0.9),
]


MEASURES = {  # each takes the work folder, the toy model and the job options (train_seed)
    "LoRA": lambda workdir, toy, **o: effects.lora_concept(workdir, toy, **o),
    "iLECO": lambda workdir, toy, **o: effects.ileco(workdir, toy, **o),
    "iLECO erase": lambda workdir, toy, **o: effects.ileco(workdir, toy, target=None, **o),
    "iLECO once": lambda workdir, toy, **o: effects.ileco(workdir, toy, ileco_latent="once", **o),
    "iLECO pool": lambda workdir, toy, **o: effects.ileco(workdir, toy, ileco_latent="pool", **o),
    "Difference": lambda workdir, toy, **o: effects.difference_slider(workdir, toy, **o),
    "ADDifT": lambda workdir, toy, **o: effects.difference_slider(workdir, toy, mode="ADDifT", **o),
    "Multi-ADDifT": lambda workdir, toy, **o: effects.difference_slider(workdir, toy, mode="Multi-ADDifT", **o),
}


def row_text(row: str, numbers: dict[str, float]) -> str:
    return f"{row:12s} " + "  ".join(f"{name} {value:.2f}" for name, value in numbers.items())


def measure(workdir: Path, rows: list[str], show, seed: int | None = None) -> dict[str, dict[str, float]]:
    """`seed`: the jobs' training seed (the rows' own, 7, when None)."""
    options = {} if seed is None else {"train_seed": seed}
    toy = load_toy_model()
    table = {"base": prompt_following(toy, seeds_per_prompt=2)}
    show("base", table["base"])
    for row in rows:
        started = time.time()
        table[row] = MEASURES[row](workdir / row.replace(" ", "-"), toy, **options).numbers  # each its own folder
        table[row]["minutes"] = (time.time() - started) / 60
        show(row, table[row])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", nargs="*", choices=list(MEASURES), default=list(MEASURES))
    parser.add_argument("--seed", type=int, help="the jobs' training seed (default: 7, the README's table)")
    args = parser.parse_args()
    started = time.time()
    show = (lambda *_: None) if args.json else (lambda row, numbers: print(row_text(row, numbers), flush=True))
    with tempfile.TemporaryDirectory() as workdir:
        table = measure(Path(workdir), args.only, show, args.seed)
    if args.json:
        print(json.dumps(table, indent=2))
        return
    for row, name, bound, target in TARGETS:
        if row not in table:
            continue
        value = table[row][name]
        met = value >= target if bound == ">=" else value <= target
        print(f"target {row} {name} {bound} {target:.0%}: {value:.0%} {'met' if met else 'NOT met'}")
    print(f"({(time.time() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()
