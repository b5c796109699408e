"""Training speed and memory of our trainer against its floor and a diffusers-style reference (issue 15).

    python benchmarks/run.py            # the tiny model and SD1.5's architecture at 64 px (CPU), or the GPU sizes
    python benchmarks/run.py --quick    # the tiny model only, without the compiled variants (minutes of compiling)
    python benchmarks/run.py --json     # the same figures as JSON
    python benchmarks/run.py --size "SD1.5 512px b1"   # only the sizes named

Every variant runs in its own process (its peak memory is its own) on the same model (random weights,
written once per run), data, precision, rank-16 lierla network on every UNet block, batch and steps;
the first `warmup` steps are not timed, and the peak memory (RSS on the CPU, CUDA's allocator peak on a
GPU) is reset after them.

- floor (a): only the work a step cannot avoid, on inputs computed once: the UNet with our adapter
  modules, MSE, backward, AdamW. The VAE and text encoder are dropped. Per mode:
  LoRA: one adapted pass on noisy latents against the noise.
  iLECO: one no-grad pass with the adapter off on the Target prompt (the target), one adapted pass
  with grad on the Original prompt.
  Difference: pass 2 only (pass 1 is a LoRA step): one pass through the frozen copier with the
  trained difference network stacked on it.
- trainer (b): `run_job` in that mode, timed from its own Progress events (`elapsed` from the first
  loss read-back after the warm-up to the last step); Difference's pass 1 runs one untimed step.
- compiled (d): the trainer (b) with train_compile: the denoiser and its adapters under torch.compile.
  Its compiles happen in the warm-up steps: not in s/step, reported as the warm-up's seconds.
- reference (c), LoRA only: the step of diffusers' `train_text_to_image_lora.py`: peft LoRA through
  `unet.add_adapter(LoraConfig)` on our network's module names (trained in fp32, as ours), VAE encode
  and text encoder every step, DDPMScheduler.add_noise, MSE, the loss read back, clipping, AdamW.

Printed: seconds per step, peak memory, b/a, c/b and d/a, the warm-up's seconds. Targets (ratios, never
timed tests): b/a <= 1.05 on every size and mode; d/a <= 0.8 (the opt-in fast path against the eager
floor); c/b >= 1.15 on SD1.5 at 512 px (a GPU size); the trainer's peak memory with gradient
checkpointing (a size named "... gc") at most 0.6 of the same size's without (SD1.5 512 px batch 4, a GPU size).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_variants import Case, case_from_dict, run_variant, write_images, write_model  # noqa: E402

VARIANTS = [("LoRA", "floor"), ("LoRA", "trainer"), ("LoRA", "compiled"), ("LoRA", "reference"),
            ("iLECO", "floor"), ("iLECO", "trainer"), ("iLECO", "compiled"), ("Difference", "floor"),
            ("Difference", "trainer"), ("Difference", "compiled")]
# row variant -> (name, divided by)
RATIOS = {"trainer": ("b/a", "floor"), "reference": ("c/b", "trainer"), "compiled": ("d/a", "floor")}
# ratio, sense, value, sizes it holds on
GC = " gc"  # a size with gradient checkpointing: the name of the same size without it, and this
GC_PEAK = "gc/no-gc peak"  # the trainer's peak memory with checkpointing against the same size's without
TARGETS = [("b/a", "<=", 1.05, None), ("d/a", "<=", 0.8, None), ("c/b", ">=", 1.15, "SD1.5 512px"),
           (GC_PEAK, "<=", 0.6, "SD1.5 512px")]
TINY = Case("tiny 64px b2", "sd1", full=False, pixels=64, batch=2, warmup=3, steps=20)
CPU_SIZES = [TINY, Case("SD1.5 64px b1", "sd1", full=True, pixels=64, batch=1, warmup=2, steps=4)]
# On a GPU the loop reads the loss every 10 steps (or 2 s): a 10-step warm-up ends on a read.
GPU_SIZES = [
    dataclasses.replace(TINY, warmup=10, steps=30),
    Case("SD1.5 512px b1", "sd1", full=True, pixels=512, batch=1, warmup=10, steps=20),
    Case("SD1.5 512px b4", "sd1", full=True, pixels=512, batch=4, warmup=10, steps=20),
    Case("SD1.5 512px b4" + GC, "sd1", full=True, pixels=512, batch=4, warmup=10, steps=20, checkpointing=True),
    Case("SDXL 1024px b1 gc", "sdxl", full=True, pixels=1024, batch=1, warmup=10, steps=20, checkpointing=True),
]
CHILD_TIMEOUT = 1800


def child(job: dict) -> dict:
    """What a subprocess does: write the model, or measure one variant."""
    if job.get("threads"):
        import torch

        torch.set_num_threads(job["threads"])
    case = case_from_dict(job["case"])
    if job["task"] == "write-model":
        return {"model": str(write_model(case, Path(job["out"])))}
    measured = run_variant(case, job["mode"], job["variant"], Path(job["model"]), Path(job["images"]),
                           Path(job["workdir"]))
    return dataclasses.asdict(measured)


def in_subprocess(job: dict) -> dict:
    """Run `child(job)` in a fresh Python; its answer is the last line, after RESULT."""
    started = time.perf_counter()
    threads = {"OMP_NUM_THREADS": str(job["threads"])} if job.get("threads") else {}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)],
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=os.environ | threads)
    wall = time.perf_counter() - started
    Path(job["log"]).write_text(done.stderr)
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not results:
        lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit status {done.returncode}"]
        return {"error": lines[-1], "wall_s": wall}
    return json.loads(results[-1].removeprefix("RESULT ")) | {"wall_s": wall}


def _forked_child(job: dict, send) -> None:
    with open(job["log"], "w") as log:  # the libraries' warnings and bars go there, not into the table
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        send.send(child(job))
    except Exception as error:  # noqa: BLE001  # reported in the table; the other variants still run
        send.send({"error": f"{type(error).__name__}: {error}"})


def in_fork(job: dict) -> dict:
    """Run `child(job)` in a fork of this process: it starts with the libraries imported (seconds saved
    per variant) and its own memory. Only on the CPU: a process that touched CUDA must not fork."""
    started = time.perf_counter()
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_forked_child, args=(job, send))
    process.start()
    send.close()
    try:
        result = receive.recv() if receive.poll(CHILD_TIMEOUT) else {"error": f"no answer in {CHILD_TIMEOUT} s"}
    except EOFError:  # it died without a word: killed for memory, or a crash in native code
        result = {"error": "the process ended without a result"}
    if process.is_alive() and "error" in result:
        process.kill()
    process.join()
    if process.exitcode and "error" not in result:
        result = {"error": f"exit status {process.exitcode}"}
    return result | {"wall_s": time.perf_counter() - started}


def launcher():
    """Forks on the CPU; fresh interpreters on a GPU (CUDA and fork do not mix)."""
    import torch

    return in_subprocess if torch.cuda.is_available() else in_fork


def measure_size(case: Case, root: Path, models: dict, threads: int | None = None,
                 variants: list[tuple[str, str]] = VARIANTS) -> list[dict]:
    """The variants on one size; the model is written once per architecture, the images once per size."""
    key = (case.family, case.full)
    if key not in models:
        name = f"model-{case.family}-{'full' if case.full else 'tiny'}"
        written = launcher()({"task": "write-model", "case": dataclasses.asdict(case), "threads": threads,
                              "out": str(root / name), "log": str(root / f"{name}.log")})
        if "error" in written:
            raise RuntimeError(f"{case.size}: writing the model failed: {written['error']}")
        models[key] = written["model"]
        os.sync()  # the written gigabytes go to disk now, not while a variant is timed
    images = root / f"images-{case.pixels}"
    if not images.exists():
        write_images(images, case.pixels)
    rows = []
    for index, (mode, variant) in enumerate(variants):
        job = {"task": "measure", "case": dataclasses.asdict(case), "mode": mode, "variant": variant,
               "model": models[key], "images": str(images), "workdir": str(root / f"out-{case.size}-{index}"),
               "threads": threads, "log": str(root / f"out-{case.size}-{index}.log")}
        rows.append({"size": case.size, "mode": mode, "variant": variant} | launcher()(job))
    return rows


def add_ratios(rows: list[dict]) -> None:
    """b/a on trainer rows, c/b on reference rows, d/a on compiled rows: time and peak memory, against the
    same size and mode; on a checkpointing size's trainer rows also the peak against the size without it."""
    by_key = {(row["size"], row["mode"], row["variant"]): row for row in rows}
    for row in rows:
        if row["variant"] not in RATIOS:
            continue
        name, against = RATIOS[row["variant"]]
        base = by_key.get((row["size"], row["mode"], against), {})
        row["ratio_name"] = name
        if "error" not in row and "error" not in base and base:
            row["ratio"] = row["seconds_per_step"] / base["seconds_per_step"]
            row["peak_ratio"] = row["peak_mb"] / base["peak_mb"]
        if row["size"].endswith(GC) and row["variant"] == "trainer":
            without = by_key.get((row["size"].removesuffix(GC), row["mode"], "trainer"))
            if without is not None:
                row["gc_peak_ratio"] = None if "error" in row or "error" in without else (
                    row["peak_mb"] / without["peak_mb"])


def _ratios_for(rows: list[dict], name: str) -> list[tuple[dict, float | None]]:
    """The rows a target's ratio is taken on, each with its ratio (None: a row without a figure)."""
    if name == GC_PEAK:
        return [(row, row["gc_peak_ratio"]) for row in rows if "gc_peak_ratio" in row]
    return [(row, row.get("ratio")) for row in rows if row.get("ratio_name") == name]


def targets(rows: list[dict]) -> list[dict]:
    """Each target on each size and mode it holds on: met, not met, no figure (an error), or not run."""
    verdicts = []
    for name, sense, value, where in TARGETS:
        held = [(row, ratio) for row, ratio in _ratios_for(rows, name) if where is None or where in row["size"]]
        for row, ratio in held:
            met = None if ratio is None else (ratio <= value if sense == "<=" else ratio >= value)
            verdicts.append({"target": f"{name} {sense} {value}", "size": row["size"], "mode": row["mode"],
                             "ratio": ratio, "verdict": {None: "no figure", True: "met", False: "not met"}[met]})
        if not held:
            verdicts.append({"target": f"{name} {sense} {value}", "size": where or "-", "mode": "-", "ratio": None,
                             "verdict": "not run (a GPU size)" if where else "not run"})
    return verdicts


def table(rows: list[dict], verdicts: list[dict]) -> str:
    lines = [f"{'size':18s} {'mode':11s} {'variant':10s} {'s/step':>9s} {'peak MB':>9s}  {'ratio':>10s} "
             f"{'peak ratio':>10s} {'setup s':>8s} {'warm-up s':>9s} {'after s':>8s} {'wall s':>7s}"]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['size']:18s} {row['mode']:11s} {row['variant']:10s}  error: {row['error']}")
            continue
        ratio = f"{row['ratio_name']} {row['ratio']:.3f}" if row.get("ratio") is not None else ""
        peak = f"{row['peak_ratio']:.2f}" if row.get("peak_ratio") is not None else ""
        lines.append(f"{row['size']:18s} {row['mode']:11s} {row['variant']:10s} {row['seconds_per_step']:9.4f} "
                     f"{row['peak_mb']:9.0f}  {ratio:>10s} {peak:>10s} {row['setup_s']:8.1f} {row['warmup_s']:9.1f} "
                     f"{row['after_s']:8.1f} "
                     f"{row['wall_s']:7.1f}")
    lines += ["", "Targets"]
    for verdict in verdicts:
        ratio = "" if verdict["ratio"] is None else f"{verdict['ratio']:.3f}"
        lines.append(f"  {verdict['target']:20s} {verdict['size']:18s} {verdict['mode']:11s} {ratio:>6s}  "
                     f"{verdict['verdict']}")
    return "\n".join(lines)


def chosen_sizes(args) -> list[Case]:
    """This device's sizes, the first (tiny) one with --quick, or those named (this device's step counts first)."""
    import torch

    sizes, others = (GPU_SIZES, CPU_SIZES) if torch.cuda.is_available() else (CPU_SIZES, GPU_SIZES)
    if not args.size:
        return sizes[:1] if args.quick else sizes
    named = {case.size: case for case in reversed(sizes + others)}
    unknown = [name for name in args.size if name not in named]
    if unknown:
        raise SystemExit(f"no size named {unknown}; choose from {sorted(named)}")
    return [named[name] for name in args.size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the tiny model only, and no compiled variant unless "
                        "--variant compiled asks for it (a cold compile takes minutes on a CPU)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--size", action="append", help="only this size (repeatable), by its name in the table")
    parser.add_argument("--threads", type=int, help="CPU threads per variant (default: torch's); 1 on a busy machine, "
                        "where threads waiting for each other at every operation cost more than they bring")
    parser.add_argument("--mode", action="append", help="only this mode (repeatable): LoRA, iLECO, Difference")
    parser.add_argument("--variant", action="append",
                        help="only this variant (repeatable): floor, trainer, compiled, reference")
    parser.add_argument("--steps", type=int, help="time this many steps after one warm-up step (a smoke run; "
                        "the figures are noisier)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return
    import torch

    started, sizes = time.perf_counter(), chosen_sizes(args)
    variants = [(mode, variant) for mode, variant in VARIANTS
                if (not args.mode or mode in args.mode) and (variant in args.variant if args.variant else
                                                             not (args.quick and variant == "compiled"))]
    if args.steps:
        sizes = [dataclasses.replace(case, warmup=1, steps=args.steps) for case in sizes]
    with tempfile.TemporaryDirectory(prefix="traintrain-bench-") as tmp:
        models: dict = {}
        rows = [row for case in sizes for row in measure_size(case, Path(tmp), models, args.threads, variants)]
    add_ratios(rows)
    verdicts = targets(rows)
    threads = args.threads or torch.get_num_threads()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({threads} threads)"
    if args.json:
        print(json.dumps({"device": device, "torch": torch.__version__, "sizes": [dataclasses.asdict(c) for c in sizes],
                          "rows": rows, "targets": verdicts, "seconds": time.perf_counter() - started}, indent=2))
    else:
        print(f"device: {device}; torch {torch.__version__}; {time.perf_counter() - started:.0f} s\n")
        print(table(rows, verdicts))


if __name__ == "__main__":
    main()
