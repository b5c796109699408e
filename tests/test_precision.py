"""Every precision runs end to end (fp16 falls back to fp32 on the CPU with a warning); checkpointing runs."""

import pytest
import torch

from job_helpers import tiny_job
from traintrain.jobs.runner import run_job
from traintrain.networks.kohya_format import load_lora
from traintrain.training.events import Message

ON_GPU = torch.cuda.is_available()


@pytest.mark.parametrize("model, lora, save, vae", [
    ("fp32", "fp32", "fp16", "fp32"),
    ("bf16", "bf16", "bf16", "bf16"),
    ("fp16", "fp32", "fp32", "fp16"),
])
def test_precisions_run_and_save_in_the_chosen_dtype(tmp_path, model, lora, save, vae):
    config = tiny_job(tmp_path, train_model_precision=model, train_lora_precision=lora, save_precision=save,
                      train_vae_precision=vae, train_iterations=2)
    events = []
    result = run_job(config, output_dir=tmp_path / "out", report=events.append)
    tensors, metadata = load_lora(result.path)
    wanted = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[save]
    assert {t.dtype for t in tensors.values()} == {wanted}
    assert all(torch.isfinite(t.float()).all() for t in tensors.values())
    warnings = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    if "fp16" in (model, vae) and not ON_GPU:
        assert any("fp16 is not supported on the CPU" in text for text in warnings)
    else:
        assert not [w for w in warnings if "fp16" in w]


def test_model_and_vae_get_their_own_precision(tmp_path, monkeypatch):
    from traintrain.jobs import runner

    seen = {}
    freeze = runner.freeze_model

    def capture(components, *args, **kwargs):
        freeze(components, *args, **kwargs)
        seen["unet"], seen["vae"] = components.unet.dtype, components.vae.dtype

    monkeypatch.setattr(runner, "freeze_model", capture)
    config = tiny_job(tmp_path, train_model_precision="bf16", train_vae_precision="fp32", train_iterations=1)
    run_job(config, output_dir=tmp_path / "out")
    assert seen == {"unet": torch.bfloat16, "vae": torch.float32}


def test_gradient_checkpointing_trains(tmp_path):
    config = tiny_job(tmp_path, use_gradient_checkpointing=True, train_iterations=2)
    result = run_job(config, output_dir=tmp_path / "out")
    assert len(result.losses) == 2 and result.path.exists()
