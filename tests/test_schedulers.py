"""Each lr schedule matches its definition at sampled steps: warm-up, restarts, power, step rules, torch classes;
reduce_on_plateau follows the loss average; settings are checked; resumed schedules continue bit for bit."""

import math
import threading

import pytest
import torch

from job_helpers import tiny_job
from traintrain.config import TrainConfig
from traintrain.errors import TrainingStopped, UserError
from traintrain.jobs.runner import resume_job, run_job
from traintrain.networks.kohya_format import load_lora
from traintrain.training import loop
from traintrain.training.events import Saved
from traintrain.training.loop import TrainingTask, run_loop
from traintrain.training.optimizers import check_optimizer
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


# --- torch's scheduler classes: each after the warm-up, expected values from their definitions ---

WARMUP = 10
SPAN = TOTAL - WARMUP  # the steps the schedule itself runs
TE_RATIO = 0.5  # the text-encoder group's lr, relative to the UNet's


def curves(**values) -> tuple[list[float], list[float]]:
    """The lr of a UNet group and a text-encoder group (lr x TE_RATIO) at each step 0..TOTAL-1."""
    config = TrainConfig(train_learning_rate=BASE, **values)
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": BASE},
              {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": BASE * TE_RATIO}]
    optimizer = torch.optim.SGD(groups, lr=BASE)
    scheduler = build_scheduler(config, optimizer, TOTAL)
    unet, text = [], []
    for _ in range(TOTAL):
        unet.append(optimizer.param_groups[0]["lr"])
        text.append(optimizer.param_groups[1]["lr"])
        optimizer.step()
        scheduler.step()
    return unet, text


def warmed(first: float, after):
    """Linear warm-up from 0 to `first` over WARMUP steps, then `after(t)` at t = step - WARMUP."""
    return lambda s: first * s / WARMUP if s < WARMUP else after(s - WARMUP)


def cosine_annealing(t, eta_min=0.0, period=SPAN, base=BASE):
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / period)) / 2


def exponential(t):
    gamma = 0.01 ** (1 / SPAN)  # 1% of the lr after the steps that follow warm-up
    return BASE * gamma**t


def multi_step(t):
    return BASE * 0.1 ** ((t >= SPAN // 2) + (t >= int(SPAN * 0.75)))  # milestones at 50% and 75%: 45, 67


def triangle(t, low, high, half):
    position = t % (2 * half)
    rise = position / half if position <= half else (2 * half - position) / half
    return low + (high - low) * rise


def one_cycle(t, high=BASE, total=SPAN, pct=0.3, div=25.0, final_div=1e4):
    """Smith's 1cycle as torch defines it: cosine from high/div up to high, then down to high/div/final_div."""
    start, end = high / div, high / div / final_div
    peak = pct * total - 1

    def anneal(a, b, fraction):
        return b + (a - b) * (1 + math.cos(math.pi * fraction)) / 2

    return anneal(start, high, t / peak) if t <= peak else anneal(high, end, (t - peak) / (total - 1 - peak))


TORCH_STEPS = (0, 1, 5, 9, 10, 11, 30, 39, 40, 41, 54, 55, 56, 70, 76, 77, 99)
TORCH_TABLE = [
    ("cosine_annealing", {}, warmed(BASE, cosine_annealing)),
    ("cosine_annealing_with_restarts", {"train_lr_scheduler_num_cycles": 3},  # T_0 = 90 / 3
     warmed(BASE, lambda t: cosine_annealing(t % 30, period=30))),
    ("cosine_annealing_with_restarts", {"train_lr_scheduler_settings": "T_0=20"},
     warmed(BASE, lambda t: cosine_annealing(t % 20, period=20))),
    ("exponential", {}, warmed(BASE, exponential)),
    ("exponential", {"train_lr_scheduler_settings": "gamma=0.9"}, warmed(BASE, lambda t: BASE * 0.9**t)),
    ("multi_step", {}, warmed(BASE, multi_step)),
    ("multi_step", {"train_lr_scheduler_settings": "milestones=[20, 40]; gamma=0.5"},
     warmed(BASE, lambda t: BASE * 0.5 ** ((t >= 20) + (t >= 40)))),
    ("cyclic", {"train_lr_scheduler_num_cycles": 3},  # lr/10 up to lr in 90 / (2 x 3) = 15 steps, and back
     warmed(BASE / 10, lambda t: triangle(t, BASE / 10, BASE, 15))),
    ("cyclic", {"train_lr_scheduler_settings": "base_lr=1e-5; max_lr=2e-3; step_size_up=10"},
     warmed(1e-5, lambda t: triangle(t, 1e-5, 2e-3, 10))),
    ("one_cycle", {}, warmed(BASE / 25, one_cycle)),
    ("one_cycle", {"train_lr_scheduler_settings": "max_lr=2e-3; pct_start=0.5"},
     warmed(2e-3 / 25, lambda t: one_cycle(t, high=2e-3, pct=0.5))),
]


@pytest.mark.parametrize("name, values, expected", TORCH_TABLE,
                         ids=[f"{row[0]}-{i}" for i, row in enumerate(TORCH_TABLE)])
def test_torch_schedules_follow_their_definitions_after_warmup(name, values, expected):
    unet, text = curves(train_lr_scheduler=name, train_lr_warmup_steps=WARMUP, **values)
    check(unet, expected, TORCH_STEPS)
    check(text, lambda s: expected(s) * TE_RATIO, TORCH_STEPS)  # the text encoder keeps its own lr


def test_eta_min_is_one_floor_for_every_group():
    """torch's eta_min is a single lr, not a fraction: both groups anneal to it."""
    _, text = curves(train_lr_scheduler="cosine_annealing", train_lr_warmup_steps=WARMUP,
                     train_lr_scheduler_settings="eta_min=1e-5")
    check(text, warmed(BASE * TE_RATIO, lambda t: cosine_annealing(t, eta_min=1e-5, base=BASE * TE_RATIO)),
          TORCH_STEPS)


def test_torch_schedules_without_warmup_start_at_once():
    unet, _ = curves(train_lr_scheduler="cosine_annealing")
    check(unet, lambda s: BASE * (1 + math.cos(math.pi * s / TOTAL)) / 2)
    unet, _ = curves(train_lr_scheduler="exponential")
    assert unet[0] == pytest.approx(BASE) and unet[-1] == pytest.approx(BASE * 0.01 ** (99 / 100))


def plateau_expected(steps, warmup, patience, factor, losses):
    """ReduceLROnPlateau by its definition: lr x factor once the best loss is `patience` steps old."""
    rates, lr, best, bad = [], BASE, math.inf, 0
    for s in range(steps):
        rates.append(BASE * s / warmup if s < warmup else lr)
        if s + 1 > warmup:  # the schedule's own steps begin after warm-up
            if losses[s] < best * (1 - 1e-4):
                best, bad = losses[s], 0
            else:
                bad += 1
            if bad > patience:
                lr, bad = lr * factor, 0
    return rates


@pytest.mark.parametrize("warmup", [0, 4])
def test_reduce_on_plateau_lowers_the_lr_when_the_loss_average_stops_falling(warmup):
    """The loop steps it on the loss EMA: a flat loss lowers the lr every patience + 1 steps."""
    config = TrainConfig(train_learning_rate=BASE, train_lr_scheduler="reduce_on_plateau", train_lr_warmup_steps=warmup,
                         train_lr_scheduler_settings="patience=5; factor=0.5")
    weight = torch.nn.Parameter(torch.ones(2))
    task = TrainingTask("test", [{"params": [weight], "lr": BASE}], lambda step: weight.sum() * 0 + 1.0, 30)
    result = run_loop(task, config, lambda event: None)
    assert result.learning_rates == pytest.approx(plateau_expected(30, warmup, 5, 0.5, [1.0] * 30), rel=1e-9)
    assert result.learning_rates[-1] < BASE / 4


def test_reduce_on_plateau_keeps_the_lr_while_the_loss_falls():
    config = TrainConfig(train_learning_rate=BASE, train_lr_scheduler="reduce_on_plateau",
                         train_lr_scheduler_settings="patience=2")
    weight = torch.nn.Parameter(torch.ones(2))
    task = TrainingTask("test", [{"params": [weight], "lr": BASE}], lambda step: weight.sum() * 0 + 10.0 / step, 20)
    assert run_loop(task, config, lambda event: None).learning_rates == pytest.approx([BASE] * 20)


def test_reduce_on_plateau_default_patience_follows_the_run_length():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    for total, patience in [(100, 10), (1010, 50), (2010, 100)]:  # 5% of the steps after warm-up, at least 10
        config = TrainConfig(train_lr_scheduler="reduce_on_plateau", train_lr_warmup_steps=10)
        assert build_scheduler(config, optimizer, total).inner.patience == patience


def schedule(name, total, warmup=WARMUP, settings=""):
    config = TrainConfig(train_learning_rate=BASE, train_lr_scheduler=name, train_lr_warmup_steps=warmup,
                         train_lr_scheduler_num_cycles=3, train_lr_scheduler_settings=settings)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    return optimizer, build_scheduler(config, optimizer, total)


def advance(optimizer, scheduler, steps, rates, losses=None):
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if losses is None:
            scheduler.step()
        else:
            scheduler.step(losses[len(rates) - 1])


def reload(optimizer, scheduler, name, total, path, **values):
    """What a resumed run does: save both states as a checkpoint does, load them into fresh ones."""
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path)
    state = torch.load(path, weights_only=True)
    optimizer, scheduler = schedule(name, total, **values)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return optimizer, scheduler


TORCH_NAMES = ["cosine_annealing", "cosine_annealing_with_restarts", "exponential", "multi_step", "cyclic", "one_cycle"]


@pytest.mark.parametrize("name", TORCH_NAMES)
@pytest.mark.parametrize("stop", [4, 37])  # in warm-up, after it
def test_a_resumed_torch_schedule_continues_bit_for_bit(tmp_path, name, stop):
    straight = []
    advance(*schedule(name, TOTAL), TOTAL, straight)
    rates = []
    optimizer, scheduler = schedule(name, TOTAL)
    advance(optimizer, scheduler, stop, rates)
    advance(*reload(optimizer, scheduler, name, TOTAL, tmp_path / "s.state"), TOTAL - stop, rates)
    assert rates == straight


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_a_finished_schedule_continued_to_more_steps_follows_the_longer_curve(tmp_path, name):
    """one_cycle's restored total would stop the run; the schedule is rebuilt for the new length."""
    straight = []
    advance(*schedule(name, TOTAL), TOTAL, straight)
    first = []
    optimizer, scheduler = schedule(name, 40)
    advance(optimizer, scheduler, 40, first)
    rest = []
    advance(*reload(optimizer, scheduler, name, TOTAL, tmp_path / "s.state"), TOTAL - 40, rest)
    assert rest == straight[40:]


@pytest.mark.parametrize("stop", [1, 15])  # in warm-up, after a reduction
def test_a_resumed_plateau_keeps_its_counters(tmp_path, stop):
    losses = [1.0] * 12 + [0.5] * 8 + [0.4] * 20
    settings = "patience=3; factor=0.5"
    straight = []
    advance(*schedule("reduce_on_plateau", 40, warmup=2, settings=settings), 40, straight, losses)
    rates = []
    optimizer, scheduler = schedule("reduce_on_plateau", 40, warmup=2, settings=settings)
    advance(optimizer, scheduler, stop, rates, losses)
    optimizer, scheduler = reload(optimizer, scheduler, "reduce_on_plateau", 40, tmp_path / "s.state",
                                  warmup=2, settings=settings)
    advance(optimizer, scheduler, 40 - stop, rates, losses)
    assert rates == straight and min(rates[2:]) < BASE


# --- train_lr_scheduler_settings: parsed like train_optimizer_settings, checked against the schedule ---


def test_settings_reach_diffusers_schedules_too():
    unet, _ = curves(train_lr_scheduler="polynomial", train_lr_scheduler_settings="lr_end=1e-5")
    check(unet, lambda s: (BASE - 1e-5) * (1 - s / TOTAL) + 1e-5)


@pytest.mark.parametrize("name, settings, fragment", [
    ("cosine_annealing", "T_maks=50", r"cosine_annealing has no setting 'T_maks'; it accepts: T_max, eta_min"),
    ("one_cycle", "max_lr=1e-3; warmup=3; foo=1", r"one_cycle has no setting 'warmup', 'foo'; it accepts: max_lr, "),
    ("reduce_on_plateau", "metric=1", r"it accepts: mode, factor, patience, threshold"),
    ("cosine", "power=2", r"cosine has no setting 'power'; it accepts: num_cycles"),
    ("constant", "gamma=0.5", r"constant has no setting 'gamma'; it takes none"),
    ("step", "gamma=0.5", r"step has no setting 'gamma'"),
    ("cosine_annealing", "eta_min", r"'eta_min' is not key=value"),
    ("one_cycle", "pct_start=2", r"one_cycle with settings \{'pct_start': 2\}"),
])
def test_bad_scheduler_settings_are_user_errors(name, settings, fragment):
    with pytest.raises(UserError, match=fragment) as info:
        curve(train_lr_scheduler=name, train_lr_scheduler_settings=settings, train_lr_step_rules="10")
    assert info.value.field == "train_lr_scheduler_settings"
    assert "--" not in str(info.value)


def test_bad_scheduler_settings_fail_the_optimizer_check():
    with pytest.raises(UserError, match="T_maks"):
        check_optimizer(TrainConfig(train_lr_scheduler="cosine_annealing", train_lr_scheduler_settings="T_maks=5"))


@pytest.mark.slow
def test_a_stopped_job_with_a_torch_schedule_resumes_bit_identical(tmp_path):
    """Through the job's state file: the plateau's counters survive torch.load(weights_only=True)."""
    values = dict(train_iterations=6, save_per_steps=3, train_lr_scheduler="reduce_on_plateau",
                  train_lr_warmup_steps=2, train_lr_scheduler_settings="patience=0; factor=0.5")
    whole = run_job(tiny_job(tmp_path, **values), output_dir=tmp_path / "whole")
    stop = threading.Event()
    with pytest.raises(TrainingStopped) as info:
        run_job(tiny_job(tmp_path, **values), output_dir=tmp_path / "stopped", stop=stop,
                report=lambda event: stop.set() if isinstance(event, Saved) and event.step == 3 else None)
    resumed = resume_job(info.value.state)
    first, second = load_lora(whole.path)[0], load_lora(resumed.path)[0]
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert resumed.losses == whole.losses
