"""Every optimizer trains a tiny LoRA; settings, missing packages, AdaFactor and schedule-free quirks."""

import sys

import pytest
import torch

from helpers import tiny_components
from traintrain.config import ALL_BLOCK_IDS, Optimizer, TrainConfig
from traintrain.errors import UserError
from traintrain.models.encoding import Conditioning
from traintrain.modes.denoising import denoising_step_loss
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from traintrain.training import loop
from traintrain.training.events import Message
from traintrain.training.loop import TrainingTask, run_loop
from traintrain.training.optimizers import REGISTRY, build_training_optimizer, check_optimizer, parse_settings
from traintrain.training.runtime import noise_scheduler

ADAPTIVE_LR = 1.0  # Prodigy and D-Adaptation multiply the step size they find by the lr


@pytest.fixture(scope="module")
def components():
    return tiny_components()


def lr_for(name: Optimizer) -> float:
    return ADAPTIVE_LR if REGISTRY[name].adaptive else 1e-3


def train_tiny(components, config, steps, save_every=0, on_save=None, events=None):
    """A few LoRA steps on fixed 8x8 latents; returns the network, its weights before, and the loop result."""
    torch.manual_seed(0)
    network = AdapterNetwork(components, NetworkSpec.from_config(config)).apply()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    dim = components.unet.config.cross_attention_dim
    cond = Conditioning(torch.randn(2, 77, dim, generator=generator))
    scheduler = noise_scheduler(False)

    def compute_loss(step):
        return denoising_step_loss(components, scheduler, latents, cond, config, generator)

    groups = [{"params": network.unet_parameters(), "lr": config.train_learning_rate}]
    task = TrainingTask("test", groups, compute_loss, steps, save_every, on_save)
    try:
        result = run_loop(task, config, (events.append if events is not None else lambda e: None))
    finally:
        network.remove()
    return network, before, result


def changed(network, before) -> bool:
    return any(not torch.equal(before[k], v) for k, v in network.state_dict().items())


UNET_ONLY = [b for b in ALL_BLOCK_IDS if b != "BASE"]


@pytest.mark.parametrize("name", list(Optimizer), ids=lambda o: o.value)
def test_every_optimizer_changes_the_weights(components, name):
    steps = 6 if name == Optimizer.RADAM_SCHEDULE_FREE else 2  # RAdam holds still until its variance estimate is usable
    config = TrainConfig(train_optimizer=name, train_learning_rate=lr_for(name), network_rank=2,
                         network_blocks=UNET_ONLY, train_iterations=steps)
    network, before, result = train_tiny(components, config, steps=steps)
    assert changed(network, before), name.value
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert all(lr >= 0 for lr in result.learning_rates)


def test_names_are_case_insensitive():
    assert TrainConfig(train_optimizer="adamw8bit").train_optimizer == Optimizer.ADAMW8BIT
    assert TrainConfig(train_optimizer="DADAPTADAM").train_optimizer == Optimizer.DADAPT_ADAM


def test_settings_lines_or_semicolons():
    text = "weight_decay=0.1; betas=0.9,0.99\n eps = 1e-6 \nfused=false;name=abc"
    assert parse_settings(text) == {
        "weight_decay": 0.1, "betas": (0.9, 0.99), "eps": 1e-6, "fused": False, "name": "abc"
    }


def test_settings_reach_the_optimizer():
    config = TrainConfig(train_optimizer="AdamW", train_optimizer_settings="weight_decay=0.3\nbetas=0.8,0.9")
    param = torch.nn.Parameter(torch.zeros(3))
    built = build_training_optimizer(config, [{"params": [param]}], 10)
    group = built.optimizer.param_groups[0]
    assert group["weight_decay"] == 0.3 and group["betas"] == (0.8, 0.9)


@pytest.mark.parametrize("name", ["AdamW", "Adam", "SGDNesterov"])
def test_torch_optimizers_step_every_tensor_in_one_fused_kernel(name):
    """torch's for-loop step launches a few ops per tensor (a LoRA has hundreds); the fused one does all at once."""
    param = torch.nn.Parameter(torch.zeros(3))
    built = build_training_optimizer(TrainConfig(train_optimizer=name), [{"params": [param]}], 10)
    assert built.optimizer.param_groups[0]["fused"] is True
    assert "'fused': True" in built.description


@pytest.mark.parametrize("settings", ["foreach=True", "fused=False"])
def test_a_chosen_implementation_is_kept(settings):
    param = torch.nn.Parameter(torch.zeros(3))
    config = TrainConfig(train_optimizer="AdamW", train_optimizer_settings=settings)
    group = build_training_optimizer(config, [{"params": [param]}], 10).optimizer.param_groups[0]
    assert not group["fused"]


def test_without_a_fused_kernel_the_optimizer_is_torch_default():
    """Parameters on the meta device (the estimate's trace) have no fused kernel: no error, the usual step."""
    param = torch.nn.Parameter(torch.zeros(3, device="meta"))
    group = build_training_optimizer(TrainConfig(), [{"params": [param]}], 10).optimizer.param_groups[0]
    assert not group["fused"]


def test_the_fused_step_moves_the_weights_as_the_for_loop_step_does():
    torch.manual_seed(0)
    start = [torch.randn(16, 8), torch.randn(8, 16)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(5)]
    moved = []
    for settings in ("", "fused=False\nforeach=False"):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        config = TrainConfig(train_optimizer="AdamW", train_optimizer_settings=settings)
        optimizer = build_training_optimizer(config, [{"params": params}], 10).optimizer
        for step_grads in grads:
            for param, grad in zip(params, step_grads, strict=True):
                param.grad = grad.clone()
            optimizer.step()
        moved.append(torch.cat([(p.detach() - t).flatten() for p, t in zip(params, start, strict=True)]))
    torch.testing.assert_close(moved[0], moved[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("settings, fragment", [
    ("weight_decay", "is not key=value"),
    ("nonsense_option=1", "nonsense_option"),
    ("betas=oops", "AdamW"),
])
def test_bad_settings_are_user_errors(settings, fragment):
    with pytest.raises(UserError, match=fragment):
        check_optimizer(TrainConfig(train_optimizer="AdamW", train_optimizer_settings=settings))


@pytest.mark.parametrize("name, package", [
    ("Prodigy", "prodigyopt"), ("AdamW8bit", "bitsandbytes"), ("DAdaptLion", "dadaptation"),
    ("SGDScheduleFree", "schedulefree"), ("CAME", "pytorch-optimizer"), ("Lion", "lion-pytorch"),
    ("Tiger", "pytorch-optimizer"), ("AdamMini", "pytorch-optimizer"), ("PagedAdamW", "bitsandbytes"),
    ("PagedAdamW32bit", "bitsandbytes"), ("PagedLion8bit", "bitsandbytes"),
])
def test_missing_library_names_the_package(monkeypatch, name, package):
    module = REGISTRY[Optimizer.parse(name, "train_optimizer")].module
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(UserError, match=f"pip install {package}"):
        check_optimizer(TrainConfig(train_optimizer=name))


def test_adafactor_relative_step_finds_its_own_lr_and_disables_the_schedule(components):
    config = TrainConfig(train_optimizer="AdaFactor", network_rank=2, network_blocks=UNET_ONLY,
                         train_lr_scheduler="linear", train_learning_rate=0.5)
    events = []
    _, _, result = train_tiny(components, config, steps=3, events=events)
    assert any("train_lr_scheduler is not used" in e.text for e in events if isinstance(e, Message))
    assert all(0 < lr < 0.5 for lr in result.learning_rates)  # found by AdaFactor, not 0.5 decaying linearly
    fixed = TrainConfig(train_optimizer="AdaFactor", train_optimizer_settings="relative_step=False",
                        train_lr_scheduler="constant", train_learning_rate=1e-3)
    param = torch.nn.Parameter(torch.zeros(3))
    built = build_training_optimizer(fixed, [{"params": [param]}], 10)
    assert not built.relative_step and built.learning_rate() == 1e-3


def test_schedule_free_saves_in_eval_mode_and_trains_in_train_mode(components, monkeypatch):
    built = []

    def capture(*args):
        built.append(build_training_optimizer(*args))
        return built[-1]

    monkeypatch.setattr(loop, "build_training_optimizer", capture)
    modes_at_save = []

    def on_save(step):
        modes_at_save.append(built[0].optimizer.param_groups[0]["train_mode"])

    config = TrainConfig(train_optimizer="AdamWScheduleFree", network_rank=2, network_blocks=UNET_ONLY)
    network, _, _ = train_tiny(components, config, steps=5, save_every=2, on_save=on_save)
    assert modes_at_save == [False, False]  # before the saves at steps 2 and 4
    optimizer = built[0].optimizer
    assert optimizer.param_groups[0]["train_mode"] is False  # left ready for the final save
    saved = {k: v.clone() for k, v in network.state_dict().items()}
    optimizer.train()  # the interpolated training point differs from the averaged weights that were saved
    assert any(not torch.equal(saved[k], v) for k, v in network.state_dict().items())


def test_adaptive_optimizers_refuse_a_separate_text_encoder_lr():
    with pytest.raises(UserError, match="train_textencoder_learning_rate"):
        check_optimizer(TrainConfig(train_optimizer="Prodigy", train_learning_rate=1.0,
                                    train_textencoder_learning_rate=0.5))
    check_optimizer(TrainConfig(train_optimizer="Prodigy", train_learning_rate=1.0))


def test_bad_optimizer_settings_stop_the_job_before_the_model_loads(tmp_path, monkeypatch):
    from traintrain.jobs import runner

    def no_load(*args, **kwargs):
        raise AssertionError("model loaded")

    monkeypatch.setattr("traintrain.models.loading.load_model", no_load)
    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "images" / "a.png")
    config = TrainConfig(model="m.safetensors", lora_data_directory=str(tmp_path / "images"),
                         train_optimizer_settings="nonsense_option=1")
    with pytest.raises(UserError, match="nonsense_option"):
        runner.run_job(config, output_dir=tmp_path / "out")


NEW_OPTIMIZERS = ["Adam", "PagedAdamW", "PagedAdamW32bit", "PagedLion8bit", "Tiger", "AdamMini"]


@pytest.mark.parametrize("name", NEW_OPTIMIZERS)
@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")  # bitsandbytes runs them unpaged
def test_the_original_extensions_other_optimizers_lower_a_loss(name):
    """A small regression (two groups, as UNet and text encoder) trained through the shared loop."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    inputs = torch.randn(64, 16)
    targets = inputs[:, :1] * 2 - inputs[:, 1:2]
    groups = [{"params": list(model[0].parameters()), "lr": 1e-2}, {"params": list(model[2].parameters()), "lr": 5e-3}]
    config = TrainConfig(train_optimizer=name, train_learning_rate=1e-2, train_lr_scheduler="constant")
    task = TrainingTask("test", groups, lambda step: torch.nn.functional.mse_loss(model(inputs), targets), 30)
    result = run_loop(task, config, lambda event: None)
    assert result.losses[-1] < 0.7 * result.losses[0], result.losses


def test_adam_mini_takes_our_groups_with_their_lrs():
    """AdamMini builds one group per tensor from a model's named parameters; each keeps its group's lr."""
    unet, text = torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.ones(5))
    config = TrainConfig(train_optimizer="AdamMini", train_learning_rate=1e-3)
    built = build_training_optimizer(config, [{"params": [unet], "lr": 1e-3}, {"params": [text], "lr": 2e-4}], 10)
    rates = {id(group["params"][0]): group["lr"] for group in built.optimizer.param_groups}
    assert rates == {id(unet): 1e-3, id(text): 2e-4}
    assert built.learning_rate() == 1e-3
    (unet.sum() + text.sum()).backward()
    built.optimizer.step()
    state = built.optimizer.state_dict()
    again = build_training_optimizer(config, [{"params": [unet], "lr": 1e-3}, {"params": [text], "lr": 2e-4}], 10)
    again.optimizer.load_state_dict(state)  # what a resumed run does
    assert again.optimizer.state_dict()["state"].keys() == state["state"].keys()
