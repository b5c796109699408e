"""Each lr schedule matches its definition at sampled steps: warm-up, restarts, power, step rules."""

import math

import pytest
import torch

from traintrain.config import TrainConfig
from traintrain.errors import UserError
from job_helpers import tiny_job
from traintrain.jobs.runner import run_job
from traintrain.training import loop
from traintrain.training.loop import TrainingTask, run_loop
from traintrain.training.schedules import build_scheduler

BASE = 1e-3
TOTAL = 100


def curve(**values) -> list[float]:
    """The lr in force at each step 0..TOTAL-1."""
    config = TrainConfig(train_learning_rate=BASE, **values)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    scheduler = build_scheduler(config, optimizer, TOTAL)
    rates = []
    for _ in range(TOTAL):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def check(rates, expected, steps=(0, 1, 5, 9, 10, 11, 30, 50, 51, 75, 99)):
    for step in steps:
        assert rates[step] == pytest.approx(expected(step), rel=1e-6, abs=1e-12), step


def warm(step, warmup=10):
    return step / warmup if step < warmup else None


def test_cosine_with_warmup():
    def expected(s):
        if s < 10:
            return BASE * s / 10
        return BASE * 0.5 * (1 + math.cos(math.pi * (s - 10) / (TOTAL - 10)))

    check(curve(train_lr_scheduler="cosine", train_lr_warmup_steps=10), expected)


def test_cosine_with_restarts_restarts_each_cycle():
    def expected(s):
        if s < 10:
            return BASE * s / 10
        progress = (s - 10) / (TOTAL - 10)
        return BASE * 0.5 * (1 + math.cos(math.pi * ((3 * progress) % 1.0)))

    rates = curve(train_lr_scheduler="cosine_with_restarts", train_lr_scheduler_num_cycles=3, train_lr_warmup_steps=10)
    check(rates, expected, steps=(0, 5, 10, 20, 39, 40, 41, 69, 70, 71, 99))
    assert rates[40] == pytest.approx(BASE) and rates[70] == pytest.approx(BASE)  # the restarts


def test_linear_with_warmup():
    check(curve(train_lr_scheduler="linear", train_lr_warmup_steps=10),
          lambda s: BASE * (warm(s) if s < 10 else (TOTAL - s) / (TOTAL - 10)))


def test_polynomial_power():
    end = 1e-7  # diffusers' lr_end

    def expected(s):
        if s < 10:
            return BASE * s / 10
        return (BASE - end) * (1 - (s - 10) / (TOTAL - 10)) ** 2 + end

    check(curve(train_lr_scheduler="polynomial", train_lr_scheduler_power=2.0, train_lr_warmup_steps=10), expected)


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup"])
def test_constant_honours_warmup(name):
    check(curve(train_lr_scheduler=name, train_lr_warmup_steps=10), lambda s: BASE * (warm(s) if s < 10 else 1))
    check(curve(train_lr_scheduler=name), lambda s: BASE)


def test_step_rules_are_honoured():
    check(curve(train_lr_scheduler="step", train_lr_step_rules="20:0.5"), lambda s: BASE * 0.5 ** (s // 20))
    check(curve(train_lr_scheduler="step", train_lr_step_rules="30"), lambda s: BASE * 0.1 ** (s // 30))
    check(curve(train_lr_scheduler="step", train_lr_step_rules="20:0.5", train_lr_warmup_steps=10),
          lambda s: BASE * (warm(s) if s < 10 else 1) * 0.5 ** (s // 20))


def test_piecewise_constant():
    rules = "1:10,0.1:50,0.01"
    check(curve(train_lr_scheduler="piecewise_constant", train_lr_step_rules=rules),
          lambda s: BASE * (1 if s < 10 else 0.1 if s < 50 else 0.01))
    check(curve(train_lr_scheduler="piecewise_constant", train_lr_step_rules=rules, train_lr_warmup_steps=5),
          lambda s: BASE * (s / 5 if s < 5 else 1 if s < 10 else 0.1 if s < 50 else 0.01))


@pytest.mark.parametrize("name, rules, fragment", [
    ("step", "", "step scheduler needs rules"),
    ("step", "often", "is not N or N:GAMMA"),
    ("step", "0:0.5", "N >= 1"),
    ("piecewise_constant", "", "piecewise_constant needs rules"),
    ("piecewise_constant", "1:10,x", "MULTIPLIER:STEP"),
    ("piecewise_constant", "1:50,0.1:10,0.01", "must increase"),
])
def test_bad_rules_say_the_format(name, rules, fragment):
    with pytest.raises(UserError, match=fragment):
        curve(train_lr_scheduler=name, train_lr_step_rules=rules)


def test_the_loop_reports_the_lr_of_each_step_and_the_text_encoder_lr():
    """Step k uses the schedule's value at k-1; a second group follows the same schedule from its own lr."""
    config = TrainConfig(train_learning_rate=BASE, train_lr_scheduler="step", train_lr_step_rules="2:0.5",
                         train_lr_warmup_steps=2)
    unet, text = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    groups = [{"params": [unet], "lr": BASE}, {"params": [text], "lr": BASE / 10}]
    text_rates = []
    task = TrainingTask("test", groups, lambda step: (unet * text).sum() ** 2, 6)
    result = run_loop(task, config, lambda event: text_rates.append(task.param_groups[1]["lr"]))
    assert result.learning_rates == pytest.approx([0, BASE / 2, BASE / 2, BASE / 2, BASE / 4, BASE / 4])
    assert text_rates[-1] == pytest.approx(BASE / 10 * 0.5**3)  # same schedule; read after step 6 moved it on


@pytest.mark.parametrize("text_lr, expected", [(0.0, 2e-3), (5e-4, 5e-4)])
def test_text_encoder_lr_zero_means_the_main_lr(tmp_path, monkeypatch, text_lr, expected):
    initial = []

    def capture(config, groups, total):
        initial.append([group["lr"] for group in groups])
        return build(config, groups, total)

    build = loop.build_training_optimizer
    monkeypatch.setattr(loop, "build_training_optimizer", capture)
    config = tiny_job(tmp_path, train_iterations=1, train_learning_rate=2e-3, train_textencoder_learning_rate=text_lr)
    run_job(config, output_dir=tmp_path / "out")
    assert initial == [[2e-3, expected]]  # UNet group, text-encoder group (BASE is selected by default)
