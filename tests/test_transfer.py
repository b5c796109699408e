"""Per-step inputs reach a GPU through page-locked memory without a wait (a plain copy from pageable
memory synchronizes the stream); on the CPU nothing changes."""

from __future__ import annotations

import torch

from traintrain.training.transfer import to_device


def test_on_the_cpu_the_tensor_and_dtype_are_as_asked():
    tensor = torch.arange(6, dtype=torch.float32)
    assert to_device(tensor, "cpu") is tensor
    half = to_device(tensor, torch.device("cpu"), torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half.float(), tensor)


def test_a_copy_to_a_gpu_is_pinned_and_not_waited_for(monkeypatch):
    """Recorded on a CPU-only machine: the calls a copy to "cuda" makes, in order."""
    calls = []
    original_to = torch.Tensor.to

    def pin_memory(self, *args, **kwargs):
        calls.append("pin_memory")
        return self

    def to(self, *args, **kwargs):
        calls.append(("to", tuple(str(a) for a in args), kwargs))
        return original_to(self, *[a for a in args if not isinstance(a, torch.device)])

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    to_device(torch.zeros(2), "cuda:0", torch.bfloat16)
    assert calls == ["pin_memory", ("to", ("cuda:0",), {"non_blocking": True}), ("to", ("torch.bfloat16",), {})]


def test_the_training_step_sends_its_inputs_through_it():
    """Every mode's per-step inputs go through to_device: no plain `.to(device)` left in the modes."""
    from pathlib import Path

    import traintrain.modes as modes

    plain = [f"{path.name}:{number}" for path in Path(modes.__path__[0]).glob("*.py")
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if ".to(" in line and "device" in line and "network.to(" not in line]
    assert plain == []
