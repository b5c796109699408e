"""benchmarks/run.py stays runnable: every variant measures a few steps on the tiny model, the trainer's
timing reads the right progress events, and the table and targets say what the ratios mean."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from traintrain.training.events import Progress

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import optimizer_step  # noqa: E402
import speed_variants  # noqa: E402

_spec = importlib.util.spec_from_file_location("benchmarks_run", BENCHMARKS / "run.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

CASE = speed_variants.Case("tiny test", "sd1", full=False, pixels=64, batch=2, warmup=1, steps=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("bench")
    model = speed_variants.write_model(CASE, root / "model")
    speed_variants.write_images(root / "images", CASE.pixels)
    return model, root / "images", root


# A cold inductor compile of the tiny UNet takes minutes on 2 CPU cores, and even dynamo's tracing through
# aot_eager 40 s: the compiled variant is the trainer's job with train_compile (checked below), and
# tests/test_compile.py runs compiled LoRA and iLECO jobs.
EAGER_VARIANTS = [(mode, variant) for mode, variant in bench.VARIANTS if variant != "compiled"]


@pytest.mark.parametrize(("mode", "variant"), EAGER_VARIANTS)
def test_every_variant_measures_a_few_steps(tiny, mode, variant):
    model, images, root = tiny
    measured = speed_variants.run_variant(CASE, mode, variant, model, images, root / f"out-{mode}-{variant}")
    assert 0 < measured.seconds_per_step < 60
    assert measured.peak_mb > 0


@pytest.mark.parametrize("mode", ["LoRA", "iLECO", "Difference"])
def test_the_compiled_variant_is_the_trainers_job_with_train_compile(tiny, mode, monkeypatch):
    model, images, root = tiny
    trainer = speed_variants.trainer_config(CASE, mode, model, images, torch.float32)
    compiled = speed_variants.trainer_config(CASE, mode, model, images, torch.float32, compiled=True)
    assert not trainer.train_compile and compiled == trainer.with_values(train_compile=True)
    asked = []
    monkeypatch.setattr(speed_variants, "trainer_measurement", lambda *args, **kwargs: asked.append(kwargs))
    speed_variants.run_variant(CASE, mode, "compiled", model, images, root / "unused")
    speed_variants.run_variant(CASE, mode, "trainer", model, images, root / "unused")
    assert asked == [{"compiled": True}, {"compiled": False}]


def progress(step: int, elapsed: float, total: int = 6) -> Progress:
    return Progress("LoRA", step, total, 0.1, 0.1, 1e-4, elapsed, 0.0)


def test_trainer_time_on_the_cpu_starts_after_the_warmup():
    """Every step is read back on the CPU: the span runs from the warm-up's last step to the end."""
    events = [progress(step, elapsed) for step, elapsed in enumerate([5.0, 6.0, 7.1, 8.0, 9.0, 10.0], start=1)]
    first, last = speed_variants.timed_span(events, warmup=2)
    assert (first.step, last.step) == (2, 6)


def test_trainer_time_on_a_gpu_starts_at_a_read_back():
    """Steps 1-3 and 4-6 are reported in two bursts, each with the time of its read: the span starts at
    step 3, the end of the first burst after the warm-up, not at step 2 (reported late)."""
    events = [progress(step, elapsed) for step, elapsed in
              zip(range(1, 7), [3.0, 3.00001, 3.00002, 6.0, 6.00001, 6.00002], strict=True)]
    first, last = speed_variants.timed_span(events, warmup=2)
    assert (first.step, last.step) == (3, 6)
    with pytest.raises(RuntimeError, match="no read-back"):
        speed_variants.timed_span(events, warmup=4)


def test_ratios_and_targets_in_the_table():
    rows = [{"size": "SD1.5 512px b1", "mode": "LoRA", "variant": variant, "seconds_per_step": seconds,
             "peak_mb": 1000.0, "setup_s": 1.0, "warmup_s": 2.0, "after_s": 0.0, "wall_s": 1.0}
            for variant, seconds in [("floor", 1.0), ("trainer", 1.1), ("compiled", 0.7), ("reference", 1.5)]]
    rows.append({"size": "SD1.5 512px b1", "mode": "iLECO", "variant": "trainer", "error": "boom", "wall_s": 1.0})
    bench.add_ratios(rows)
    assert rows[1]["ratio"] == pytest.approx(1.1) and rows[3]["ratio"] == pytest.approx(1.5 / 1.1)
    assert rows[2]["ratio"] == pytest.approx(0.7)  # the compiled trainer against the eager floor
    verdicts = {(v["target"], v["mode"]): v["verdict"] for v in bench.targets(rows)}
    assert verdicts == {("b/a <= 1.05", "LoRA"): "not met", ("b/a <= 1.05", "iLECO"): "no figure",
                        ("d/a <= 0.8", "LoRA"): "met", ("c/b >= 1.15", "LoRA"): "met",
                        ("gc/no-gc peak <= 0.6", "-"): "not run (a GPU size)"}
    text = bench.table(rows, bench.targets(rows))
    assert "b/a 1.100" in text and "d/a 0.700" in text and "c/b 1.364" in text and "error: boom" in text


def test_checkpointings_peak_is_compared_with_the_same_size_without_it():
    def row(size, variant, peak, **extra):
        return {"size": size, "mode": "LoRA", "variant": variant, "seconds_per_step": 1.0, "peak_mb": peak,
                "setup_s": 1.0, "warmup_s": 2.0, "after_s": 0.0, "wall_s": 1.0} | extra

    rows = [row("SD1.5 512px b4", "floor", 7000.0), row("SD1.5 512px b4", "trainer", 8000.0),
            row("SD1.5 512px b4 gc", "floor", 3000.0), row("SD1.5 512px b4 gc", "trainer", 3600.0)]
    bench.add_ratios(rows)
    assert rows[3]["gc_peak_ratio"] == pytest.approx(0.45) and "gc_peak_ratio" not in rows[1]
    verdicts = [v for v in bench.targets(rows) if v["target"] == "gc/no-gc peak <= 0.6"]
    assert [(v["size"], v["verdict"]) for v in verdicts] == [("SD1.5 512px b4 gc", "met")]
    rows[1] = row("SD1.5 512px b4", "trainer", 0.0, error="out of memory")
    rows[3].pop("gc_peak_ratio")
    bench.add_ratios(rows)
    assert [v["verdict"] for v in bench.targets(rows) if v["target"] == "gc/no-gc peak <= 0.6"] == ["no figure"]
    assert "SD1.5 512px b4 gc" in {case.size for case in bench.GPU_SIZES}


def test_a_target_no_variant_was_run_for_is_printed_as_not_run():
    """--variant floor --variant compiled: no trainer row, so nothing holds b/a (it crashed the table)."""
    rows = [{"size": "tiny 64px b2", "mode": "Difference", "variant": variant, "seconds_per_step": seconds,
             "peak_mb": 1000.0, "setup_s": 1.0, "warmup_s": 2.0, "after_s": 0.0, "wall_s": 1.0}
            for variant, seconds in [("floor", 1.0), ("compiled", 0.7)]]
    bench.add_ratios(rows)
    verdicts = bench.targets(rows)
    assert {v["target"]: v["verdict"] for v in verdicts} == {
        "b/a <= 1.05": "not run", "d/a <= 0.8": "met", "c/b >= 1.15": "not run (a GPU size)",
        "gc/no-gc peak <= 0.6": "not run (a GPU size)"}
    assert re.search(r"b/a <= 1.05 +- ", bench.table(rows, verdicts))


def test_the_optimizer_benchmark_steps_a_whole_adapter_with_each_implementation():
    parameters = optimizer_step.adapter_parameters(full=False)
    assert len(parameters) == 384 and all(p.grad is not None for p in parameters)
    before = [p.detach().clone() for p in parameters]
    for settings in optimizer_step.IMPLEMENTATIONS.values():
        assert optimizer_step.milliseconds_per_step(torch.optim.AdamW(parameters, lr=1e-4, **settings), steps=2) > 0
    assert all(not torch.equal(p, b) for p, b in zip(parameters, before, strict=True))


def test_the_read_memory_benchmark_compares_the_readers():
    result = subprocess.run([sys.executable, str(BENCHMARKS / "read_memory.py"), "--megabytes", "16"],
                            capture_output=True, text=True, check=True, timeout=300)
    assert "fp8 file: 16 MB" in result.stdout and "ours / load_file + float32:" in result.stdout
    for dtype in ("float16", "float32"):
        assert f"loaded as {dtype}, memory-mapped / torch.load into memory:" in result.stdout


@pytest.mark.slow
def test_quick_run_prints_every_variant_as_json():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--json", "--threads", "1",
                           "--steps", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert [(row["mode"], row["variant"]) for row in report["rows"]] == EAGER_VARIANTS  # --quick: none compiled
    assert not [row for row in report["rows"] if "error" in row]
    assert {v["verdict"] for v in report["targets"]} <= {"met", "not met", "not run", "not run (a GPU size)"}


@pytest.mark.slow
def test_a_fresh_interpreter_answers_as_on_a_gpu(tmp_path):
    """On a GPU each variant runs in a fresh interpreter (CUDA and fork do not mix): that path works too."""
    job = {"task": "write-model", "case": dataclasses.asdict(CASE), "out": str(tmp_path / "model"),
           "log": str(tmp_path / "model.log"), "threads": 1}
    answer = bench.in_subprocess(job)
    assert Path(answer["model"]).is_dir() and answer["wall_s"] > 0, answer
