"""The pre-flight estimate (training/estimate.py): a meta-device trace that matches a real one, on the UNet and on
the SD3 and Z-Image transformers (Flux's: tests/test_flux_modes.py)."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from helpers import tiny_components
from job_helpers import tiny_job
from sample_images import write_demo_images
from traintrain.config import ALL_BLOCK_IDS, TrainConfig
from traintrain.jobs.runner import run_job
from traintrain.models.encoding import encode_prompts
from traintrain.models.families import Family
from traintrain.models.tiny import build_tiny_components, write_tiny_model
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from traintrain.training import estimate
from traintrain.training.events import Message

SPEC = NetworkSpec(rank=4, alpha=4, blocks=list(ALL_BLOCK_IDS))
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def components():
    return tiny_components()


def run_estimate(components, **values):
    config = TrainConfig(image_size=[256, 256], **values)
    return estimate.estimate_run(components, SPEC, config, CPU, torch.float32, torch.float32)


def test_the_meta_trace_keeps_what_a_real_step_keeps(components):
    """Activations traced on the meta device equal those a real forward keeps for backward."""
    meta_unet, _, _ = estimate._meta_denoiser(components, SPEC, torch.float32, checkpointing=False)
    meta_bytes, meta_forward, meta_backward = estimate._trace_step(
        meta_unet, estimate._meta_inputs(components, meta_unet, 2, 32, 32, torch.float32))
    AdapterNetwork(components, SPEC).apply()
    real = dict(sample=torch.randn(2, 4, 32, 32), timestep=torch.tensor([500, 500]),
                encoder_hidden_states=torch.randn(2, 77, 64))
    with sdpa_kernel(SDPBackend.MATH):  # the CPU's flash kernel is not counted by torch's FLOP counter
        real_bytes, real_forward, real_backward = estimate._trace_step(components.unet, real)
    assert meta_bytes == pytest.approx(real_bytes, rel=0.05)  # 4 % measured: meta views share storage less
    assert (meta_forward, meta_backward) == pytest.approx((real_forward, real_backward), rel=0.02)
    assert meta_backward > meta_forward > 0


def test_activations_follow_batch_and_checkpointing(components):
    one, four = run_estimate(components, train_batch_size=1), run_estimate(components, train_batch_size=4)
    assert four.activations == pytest.approx(4 * one.activations, rel=0.1)
    assert four.flops == pytest.approx(4 * one.flops, rel=0.1)
    checkpointed = run_estimate(components, train_batch_size=4, use_gradient_checkpointing=True)
    assert checkpointed.activations < 0.5 * four.activations
    assert checkpointed.flops > four.flops  # the forward runs again in the backward pass
    parts = (components.unet, components.vae, *components.text_encoders)
    tensors = [t for part in parts for t in (*part.parameters(), *part.buffers())]
    assert four.weights == sum(t.numel() * t.element_size() for t in tensors)
    assert four.peak > four.weights + four.activations and four.seconds_per_step > 0


def test_a_run_that_will_not_fit_is_warned(components, monkeypatch):
    result = run_estimate(components, train_batch_size=2)
    messages = []
    monkeypatch.setattr(estimate, "free_memory", lambda device: result.peak // 2)
    estimate.report_estimate(result, CPU, messages.append)
    assert messages[0].text.startswith("estimate: peak ")
    assert messages[1].level == "warning" and "use_gradient_checkpointing" in messages[1].text
    monkeypatch.setattr(estimate, "free_memory", lambda device: result.peak * 2)
    messages.clear()
    estimate.report_estimate(result, CPU, messages.append)
    assert len(messages) == 1


@pytest.mark.parametrize("choice, shown", [("true", True), ("auto", False)])  # auto: on a GPU only
def test_the_job_reports_its_estimate(tmp_path, choice, shown):
    events = []
    run_job(tiny_job(tmp_path, train_iterations=1, train_estimate=choice), output_dir=tmp_path / "out",
            report=events.append)
    texts = [e.text for e in events if isinstance(e, Message)]
    assert any(t.startswith("estimate: peak") for t in texts) is shown


def _real_transformer_inputs(components, batch: int, side: int) -> dict:
    """A real step's transformer inputs as modes/flow_matching.py passes them (Z-Image's prompts at the padded
    length, as the estimate assumes)."""
    with torch.no_grad():
        cond = encode_prompts(components, ["a red circle", "a blue square"][:batch])
    latents = torch.randn(batch, 16, side, side)
    if components.family is Family.SD3:
        return dict(hidden_states=latents, timestep=torch.full((batch,), 500.0), encoder_hidden_states=cond.hidden,
                    pooled_projections=cond.pooled)
    return dict(x=list(latents.unsqueeze(2).unbind(0)), t=torch.full((batch,), 0.5), cap_feats=list(cond.hidden))


@pytest.mark.parametrize("family", [Family.SD3, Family.ZIMAGE])
def test_the_meta_trace_keeps_what_a_real_transformer_step_keeps(family):
    components = build_tiny_components(family)
    for part in (components.transformer, components.vae, *components.text_encoders):
        part.requires_grad_(False)
    meta, _, _ = estimate._meta_denoiser(components, SPEC, torch.float32, checkpointing=False)
    meta_bytes, meta_forward, meta_backward = estimate._trace_step(
        meta, estimate._meta_inputs(components, meta, 2, 16, 16, torch.float32))
    AdapterNetwork(components, SPEC).apply()
    with sdpa_kernel(SDPBackend.MATH):  # the CPU's flash kernel is not counted by torch's FLOP counter
        real_bytes, real_forward, real_backward = estimate._trace_step(
            components.transformer, _real_transformer_inputs(components, 2, 16))
    assert meta_bytes == pytest.approx(real_bytes, rel=0.10)
    assert (meta_forward, meta_backward) == pytest.approx((real_forward, real_backward), rel=0.02)
    assert meta_backward > meta_forward > 0


@pytest.mark.parametrize("family", [Family.SD3, Family.ZIMAGE])
def test_sd3_and_zimage_runs_are_estimated(family):
    components = build_tiny_components(family)
    one, two = (run_estimate(components, train_batch_size=batch) for batch in (1, 2))
    assert two.activations == pytest.approx(2 * one.activations, rel=0.1) and one.seconds_per_step > 0
    checkpointed = run_estimate(components, train_batch_size=2, use_gradient_checkpointing=True)
    assert checkpointed.activations < 0.5 * two.activations


@pytest.mark.parametrize("family, model, name", [("sd3", "single-file", "sd3-tiny.safetensors"),
                                                ("zimage", "diffusers", "zimage-tiny")])
def test_sd3_and_zimage_jobs_report_their_estimate(tmp_path, family, model, name):
    path = write_tiny_model(family, model, tmp_path / name)
    write_demo_images(tmp_path / "images")
    config = TrainConfig(
        model=str(path), lora_data_directory=str(tmp_path / "images"), network_rank=2, network_alpha=2,
        train_iterations=1, train_batch_size=1, image_size=[64, 64], image_buckets_step=64, image_min_length=64,
        train_model_precision="fp32", save_precision="fp32", train_estimate=True,
    )
    events = []
    run_job(config, output_dir=tmp_path / "out", report=events.append)
    messages = [e for e in events if isinstance(e, Message)]
    assert any(m.text.startswith("estimate: peak") for m in messages)
    assert not any("estimate" in m.text for m in messages if m.level == "warning")


@pytest.mark.parametrize("family", [Family.FLUX, Family.SD3])
def test_transformer_runs_count_clip_adapters_and_leave_t5_out(family):
    """Block BASE trains CLIP's adapters there (counted as the real network has them); T5 waits on the CPU while
    training (models/encoder_offload.py), so its weights are not on the device."""
    from traintrain.models.encoder_offload import t5_encoder

    components = build_tiny_components(family)
    with_base = run_estimate(components)
    transformer_only = NetworkSpec(rank=4, alpha=4, blocks=[b for b in ALL_BLOCK_IDS if b != "BASE"])
    without_base = estimate.estimate_run(components, transformer_only, TrainConfig(image_size=[256, 256]), CPU,
                                         torch.float32, torch.float32)
    real = AdapterNetwork(components, SPEC).apply()
    transformer_values = sum(p.numel() for m in real.unet_modules for p in m.parameters())
    all_values = transformer_values + sum(p.numel() for m in real.text_encoder_modules for p in m.parameters())
    assert all_values > transformer_values  # CLIP's adapters exist ...
    assert with_base.network * transformer_values == without_base.network * all_values  # ... and are counted
    def size(part) -> int:
        return sum(t.numel() * t.element_size() for t in (*part.parameters(), *part.buffers()))

    everything = sum(size(part) for part in (components.denoiser, components.vae, *components.text_encoders))
    assert with_base.weights == everything - size(t5_encoder(components))


def test_zimage_runs_leave_qwen3_out():
    """Z-Image's Qwen3 waits on the CPU while training (models/encoder_offload.py), as T5 does on Flux and SD3."""
    components = build_tiny_components(Family.ZIMAGE)
    found = run_estimate(components)

    def size(part) -> int:
        return sum(t.numel() * t.element_size() for t in (*part.parameters(), *part.buffers()))

    assert found.weights == size(components.denoiser) + size(components.vae)
