"""NaN guard: a non-finite loss or gradient stops the run cleanly (or is skipped, up to a limit)."""

from pathlib import Path

import pytest
import torch

import traintrain.modes.lora as lora_mode
from job_helpers import tiny_job
from traintrain.cli import EXIT_DIVERGED, main
from traintrain.jobs.runner import run_job
from traintrain.networks.kohya_format import load_lora
from traintrain.training.events import Message, Saved
from traintrain.errors import NonFiniteLoss


class NanGradient(torch.autograd.Function):
    """Passes the loss through unchanged; its gradient comes back NaN."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def break_steps(monkeypatch, steps, how="loss"):
    """Make LoRA mode's loss (or its gradient) non-finite at the given steps."""
    real, calls = lora_mode.image_step_loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        value = real(*args, **kwargs)
        if len(calls) not in steps:
            return value
        return value * float("nan") if how == "loss" else NanGradient.apply(value)

    monkeypatch.setattr(lora_mode, "image_step_loss", loss)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nan")
    tiny_job(root)
    return root


@pytest.mark.parametrize("sync_every", [0, 3])  # 3: step 5's loss is read back at step 6, before its save
@pytest.mark.parametrize("how, problem", [("loss", "the loss is nan"), ("gradient", "the gradient norm is nan")])
def test_non_finite_step_stops_and_keeps_the_last_good_save(root, tmp_path, monkeypatch, how, problem, sync_every):
    break_steps(monkeypatch, {5}, how)
    saved = {}  # each file's bytes when it was saved

    def report(event):
        if isinstance(event, Saved):
            saved[event.path] = Path(event.path).read_bytes()

    with pytest.raises(NonFiniteLoss) as info:
        run_job(tiny_job(root, train_iterations=8, save_per_steps=2, train_sync_every=sync_every), output_dir=tmp_path,
                report=report)
    message = str(info.value)
    assert "step 5" in message and problem in message and "\n" not in message
    assert "fp16" in message and "learning rate" in message and "job_4steps.safetensors is kept" in message
    files = sorted(p.name for p in tmp_path.glob("job*"))
    assert files == ["job_2steps.safetensors", "job_4steps.safetensors", "job_4steps.state"]
    assert saved[str(tmp_path / "job_4steps.safetensors")] == (tmp_path / "job_4steps.safetensors").read_bytes()


def test_skip_policy_skips_up_to_the_limit(root, tmp_path, monkeypatch):
    break_steps(monkeypatch, {1, 3, 5})
    events = []
    result = run_job(tiny_job(root, train_iterations=6, train_nan_policy="skip"), output_dir=tmp_path,
                     report=events.append)
    assert len(result.losses) == 6 and [i for i, v in enumerate(result.losses) if v != v] == [0, 2, 4]
    warnings = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert any("step 3: the loss is nan; step skipped (2 of at most 10)" in w for w in warnings)
    tensors, _ = load_lora(result.path)
    assert all(torch.isfinite(t).all() for t in tensors.values())


def test_skip_policy_stops_past_the_limit(root, tmp_path, monkeypatch):
    break_steps(monkeypatch, {2, 4})
    with pytest.raises(NonFiniteLoss, match="step 4 after 1 skipped steps"):
        run_job(tiny_job(root, train_iterations=6, train_nan_policy="skip", train_nan_skip_limit=1), output_dir=tmp_path)
    assert not list(tmp_path.glob("job*.safetensors"))


def test_cli_exit_code_and_one_line(root, tmp_path, monkeypatch, capsys):
    break_steps(monkeypatch, {2})
    config = tiny_job(root)
    config.save_json(tmp_path / "job.json")
    code = main(["train", "--config", str(tmp_path / "job.json"), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == EXIT_DIVERGED == 3
    lines = [line for line in err.splitlines() if line.startswith("traintrain:")]
    assert len(lines) == 1 and "step 2" in lines[0] and "Traceback" not in err
    code = main(["train", "--config", str(tmp_path / "job.json"), "--output-dir", str(tmp_path / "out"),
                 "--nan-policy", "skip"])
    assert code == 0 and (tmp_path / "out" / "job.safetensors").is_file()
