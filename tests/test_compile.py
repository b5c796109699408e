"""train_compile (training/compile.py): the compiled denoiser trains as the eager one and saves the same
file; a new multiplier, previews and the adapter switched off do not compile every step; where
torch.compile cannot work, training goes on eagerly after one warning."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch._dynamo.utils import counters

from job_helpers import tiny_job
from traintrain.config import TrainConfig
from traintrain.jobs.runner import run_job
from traintrain.models.tiny import write_tiny_model
from traintrain.networks.lierla import LoRAModule
from traintrain.training import compile as compile_module
from traintrain.training.compile import compile_denoiser, compiled_calls
from traintrain.training.events import Message

CPU = torch.device("cpu")


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def adapted_layers() -> tuple[TwoLayers, list[LoRAModule]]:
    torch.manual_seed(0)
    model = TwoLayers().requires_grad_(False)
    adapters = [LoRAModule(name, layer, 2, 2) for name, layer in (("first", model.first), ("second", model.second))]
    for adapter in adapters:
        adapter.apply_to()
        nn.init.normal_(adapter.lora_up.weight)
    return model, adapters


def warnings(events) -> list[str]:
    return [e.text for e in events if isinstance(e, Message) and e.level == "warning"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_a_new_multiplier_reuses_the_graph_and_eager_calls_compile_nothing(monkeypatch):
    monkeypatch.setattr(compile_module, "BACKEND", "aot_eager")  # guards, and so recompiles, are dynamo's
    model, adapters = adapted_layers()
    keys = list(model.state_dict())
    assert compile_denoiser(model, CPU, print)
    x = torch.randn(3, 8)
    for multiplier in [1.0, 0.5, -0.25, 0.0, 1.0]:
        for adapter in adapters:
            adapter.multiplier = multiplier
        with compiled_calls():
            compiled = model(x)
        assert torch.allclose(compiled, model(x), atol=1e-6), multiplier
    assert counters["stats"]["unique_graphs"] == 1
    with torch.no_grad():  # as previews call it: outside the loop's loss, eagerly
        model(x)
    assert counters["stats"]["unique_graphs"] == 1
    for adapter in adapters:
        adapter.enabled = False
    with torch.no_grad(), compiled_calls():  # iLECO's target pass: one more graph, once
        model(x)
        model(x)
    assert counters["stats"]["unique_graphs"] == 2
    assert list(model.state_dict()) == keys  # no _orig_mod. prefix


def test_no_compiler_means_eager_training_after_one_warning(monkeypatch):
    from torch._inductor import cpp_builder

    def no_compiler():
        raise RuntimeError("Failed to find a working C++ compiler")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    model, _ = adapted_layers()
    events: list = []
    assert not compile_denoiser(model, CPU, events.append)
    assert "forward" not in vars(model)  # the class's forward, untouched
    assert warnings(events) == ["train_compile: no C++ compiler for inductor on the CPU (Failed to find a working "
                                "C++ compiler); training eagerly"]


def test_a_compile_that_fails_at_the_first_step_falls_back_to_eager_once(monkeypatch):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("the backend broke")

    monkeypatch.setattr(compile_module, "BACKEND", broken_backend)
    model, _ = adapted_layers()
    events: list = []
    assert compile_denoiser(model, CPU, events.append)
    x = torch.randn(3, 8)
    with compiled_calls():
        first, second = model(x), model(x)
    assert torch.equal(first, second)
    assert len(warnings(events)) == 1 and "the backend broke" in warnings(events)[0]
    assert "training eagerly" in warnings(events)[0]


@pytest.mark.parametrize("device, options", [
    ("cpu", {"layout_optimization": False}),  # channels-last copies of every frozen conv weight at every step
    ("cuda", {}),
])
def test_inductor_is_told_the_device_settings(monkeypatch, device, options):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.append(kwargs) or fn)
    monkeypatch.setattr(compile_module, "compile_unavailable", lambda device: None)
    model, _ = adapted_layers()
    assert compile_denoiser(model, torch.device(device), print)
    assert seen == [{"backend": "inductor", "dynamic": False, "options": options}]


def test_inductor_trains_adapted_layers_as_eager():
    """The real backend on a small adapted model (a cold inductor compile of the whole tiny UNet takes
    about 4 minutes on 2 cores; the job test below runs the same wiring through aot_eager). Inductor fuses
    and reorders fp32 arithmetic, so outputs and gradients differ from eager by rounding only."""
    eager_model, eager_adapters = adapted_layers()
    model, adapters = adapted_layers()
    assert compile_denoiser(model, CPU, print)
    x = torch.randn(4, 8)
    with compiled_calls():
        compiled = model(x)
    eager = eager_model(x)
    assert torch.allclose(compiled, eager, atol=1e-6)
    compiled.square().sum().backward()
    eager.square().sum().backward()
    for ours, theirs in zip(adapters, eager_adapters):
        for name, parameter in ours.named_parameters():
            assert torch.allclose(parameter.grad, dict(theirs.named_parameters())[name].grad, atol=1e-5), name
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
def test_a_compiled_lora_job_trains_and_saves_as_the_eager_one(tmp_path, monkeypatch):
    """The whole job through the compiled path (one graph for its one bucket shape), with aot_eager as the
    backend: it traces, partitions forward and backward and runs them as inductor's input would be, but
    with eager kernels, so the losses and the saved file equal eager training's up to op decomposition."""
    monkeypatch.setattr(compile_module, "BACKEND", "aot_eager")
    eager_config = tiny_job(tmp_path, train_iterations=4)  # 8 pictures, one 64x64 bucket: one shape
    eager = run_job(eager_config, output_dir=tmp_path / "eager")
    events: list = []
    compiled = run_job(eager_config.with_values(train_compile=True), output_dir=tmp_path / "compiled",
                       report=events.append)
    assert not warnings(events)
    assert counters["stats"]["unique_graphs"] == 1
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-5)
    eager_file, compiled_file = load_file(eager.path), load_file(compiled.path)
    assert sorted(compiled_file) == sorted(eager_file)
    differences = torch.cat([(compiled_file[key] - value).flatten() for key, value in eager_file.items()]).abs()
    assert differences.median() < 1e-6
    assert differences.max() <= 4 * eager_config.train_learning_rate  # AdamW: a near-zero gradient's sign


@pytest.mark.slow
def test_an_ileco_job_compiles_its_two_passes_once(tmp_path, monkeypatch):
    """iLECO runs the denoiser twice a step: without gradients and with the adapter off (the target), then
    adapted with gradients. Two graphs, whatever the number of steps."""
    monkeypatch.setattr(compile_module, "BACKEND", "aot_eager")
    model = write_tiny_model("sd1", "single-file", tmp_path / "tiny.safetensors")
    config = TrainConfig(
        mode="iLECO", model=str(model), original_prompt="a red circle", target_prompt="a blue square",
        network_rank=2, network_alpha=2, train_iterations=4, train_batch_size=2, image_size=[64, 64],
        train_model_precision="fp32", save_precision="fp32", train_seed=3, save_lora_name="ileco",
        train_compile=True, preview_sampling_steps=1,
    )
    events: list = []
    result = run_job(config, output_dir=tmp_path, report=events.append)
    assert len(result.losses) == 4
    assert not warnings(events)
    assert counters["stats"]["unique_graphs"] == 2
