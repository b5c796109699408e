"""The transformer families beyond LoRA mode (issue 16): iLECO, Difference (copy machine), ADDifT and
Multi-ADDifT train on the flow-matching objective on Flux.1, and through the same per-family objective
on SD3 and Z-Image; every mode gives Flux.1-dev the train_flux_guidance setting; previews render through
FluxPipeline; the pre-flight estimate traces the transformer. Every job runs on a tiny random model (Flux and
SD3 single files, a Z-Image folder) at 64 px."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel

from sample_images import draw_shape
from traintrain.choices import ALL_BLOCK_IDS, ModelPrecision
from traintrain.config import TrainConfig
from traintrain.jobs.runner import run_job
from traintrain.models.encoding import Conditioning, encode_prompts
from traintrain.models.families import Family
from traintrain.models.loading import load_model
from traintrain.modes.common import prompt_only_spec
from traintrain.modes.flow_matching import pack, transformer_predict
from traintrain.modes.ileco import ileco_latent
from traintrain.modes.objective import image_step_loss, predict
from traintrain.modes.previews import MULTIPLIERS
from traintrain.networks.kohya_format import load_lora
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from traintrain.rendering import ROW_TITLE_MIN_WIDTH
from traintrain.training import estimate
from traintrain.training.events import PREVIEW, Message, Written
from traintrain.training.runtime import freeze_model

SIZE = 64
# One noise (diff_use_fixed_noise) and one timestep: every step sees the same batch, so its loss must fall.
FIXED_BATCH = dict(diff_use_fixed_noise=True, train_min_timesteps=500, train_max_timesteps=501)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from traintrain.models.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("flux_modes")
    write_tiny_model("flux", "single-file", root / "flux1-tiny.safetensors")
    write_tiny_model("sd3", "single-file", root / "sd3-tiny.safetensors")
    write_tiny_model("zimage", "diffusers", root / "zimage-tiny")
    draw_shape((220, 40, 40), "ellipse", (250, 240, 200)).save(root / "original.png")
    draw_shape((40, 70, 220), "ellipse", (250, 240, 200)).save(root / "target.png")
    pairs = root / "pairs"
    pairs.mkdir()
    for index, kind in enumerate(("ellipse", "rectangle")):
        draw_shape((220, 40, 40), kind, (250, 240, 200)).save(pairs / f"{index}.png")
        draw_shape((220, 40, 40), kind, (250, 240, 200), offset=8).save(pairs / f"{index}_target.png")
        (pairs / f"{index}.txt").write_text(f"a red {kind}")
    return root


MODELS = {"flux": "flux1-tiny.safetensors", "sd3": "sd3-tiny.safetensors", "zimage": "zimage-tiny"}


def flux_job(root, family: str = "flux", **values) -> TrainConfig:
    settings = dict(
        model=str(root / MODELS[family]), network_rank=4, network_alpha=4, train_iterations=6,
        train_learning_rate=3e-2, train_batch_size=1, image_size=[SIZE, SIZE], image_buckets_step=SIZE,
        image_min_length=SIZE, train_model_precision="fp32", save_precision="fp32", train_seed=1,
        original_image=str(root / "original.png"), target_image=str(root / "target.png"),
        original_prompt="a red circle", target_prompt="a blue circle",
    )
    return TrainConfig(**(settings | values))


def falls(losses: list[float]) -> bool:
    return losses[-1] < 0.9 * losses[0]


ILECO = dict(mode="iLECO", train_iterations=40, train_learning_rate=5e-3, train_batch_size=2, train_estimate=True,
             preview_prompts="a red circle", preview_sampling_steps=2, preview_every_steps=40, save_lora_name="ileco")


def held_out_distances(config, path) -> tuple[float, float]:
    """Mean squared distance between the Original prediction and the frozen Target one, without and with
    the adapter, on latents, timesteps and noise the training never saw."""
    components = load_model(config.model)
    network = AdapterNetwork(components, prompt_only_spec(config))
    network.load_tensors(load_lora(path)[0])
    network.apply()
    latents = ileco_latent(config.with_values(train_batch_size=4), components, torch.Generator().manual_seed(99))
    assert latents.shape == (4, 16, 8, 8)
    cond = encode_prompts(components, [config.original_prompt, config.target_prompt])
    original, target = (Conditioning(cond.hidden[i:i + 1].expand(4, -1, -1), cond.pooled[i:i + 1].expand(4, -1))
                        for i in (0, 1))

    def distance(with_adapter: bool) -> float:
        total = 0.0
        with torch.no_grad():
            for t in (150, 400, 650, 900):
                timesteps = torch.full((4,), t)
                network.set_enabled(False)
                wanted = predict(components, latents, timesteps, target, config)
                network.set_enabled(with_adapter)
                total += torch.mean((predict(components, latents, timesteps, original, config) - wanted) ** 2).item()
        return total / 4

    return distance(False), distance(True)


def preview_columns(path) -> list[np.ndarray]:
    grid = np.asarray(Image.open(path).convert("RGB")).astype(int)
    left = ROW_TITLE_MIN_WIDTH  # the prompt's title strip
    assert grid.shape == (18 + SIZE, left + SIZE * len(MULTIPLIERS), 3)  # one prompt, a column per multiplier
    return [grid[18:, left + i * SIZE:left + (i + 1) * SIZE] for i in range(len(MULTIPLIERS))]


def test_ileco_job_with_previews_and_estimate(root, tmp_path):
    """One job (they cost seconds): iLECO's effect on held-out noise, its previews rendered by FluxPipeline,
    and the pre-flight estimate of the transformer."""
    events = []
    config = flux_job(root, **ILECO)
    result = run_job(config, output_dir=tmp_path, report=events.append)

    before, after = held_out_distances(config, result.path)
    assert after < 0.5 * before, (before, after)  # 0.31 measured

    written = [e.path for e in events if isinstance(e, Written) and e.kind == PREVIEW]
    assert written == [str(tmp_path / "ileco_0steps_preview.png"), str(tmp_path / "ileco_preview.png")]
    untrained, trained = preview_columns(written[0]), preview_columns(written[1])
    assert all(np.array_equal(column, untrained[1]) for column in untrained)  # a zero adapter changes nothing
    assert np.array_equal(trained[1], untrained[1])  # x0 is the base model
    assert np.abs(trained[2] - trained[1]).mean() > 0.1  # the trained adapter changes the picture at +1

    texts = [e.text for e in events if isinstance(e, Message)]
    assert any(t.startswith("estimate: peak") for t in texts)
    assert not any("no memory estimate" in t or "preview" in t and "not" in t for t in texts)


@pytest.mark.parametrize("family", ["flux", "sd3", "zimage"])
def test_difference_trains_the_copier_then_the_difference(root, tmp_path, family):
    steps = 16 if family == "sd3" else 8  # the tiny SD3's second pass falls less than 10 % in 8 steps
    config = flux_job(root, family, mode="Difference", train_iterations=steps, diff_save_1st_pass=True,
                      save_lora_name="difference", **FIXED_BATCH)
    result = run_job(config, output_dir=tmp_path)
    copier_losses = result.outcome.extras["copier_losses"]
    assert falls(copier_losses) and falls(result.losses), (copier_losses, result.losses)
    assert result.losses[0] > copier_losses[-1]  # the copier knows the Original; the Target is new to it
    difference, _ = load_lora(result.path)
    copier, _ = load_lora(tmp_path / "difference_copy.safetensors")
    assert difference.keys() == copier.keys() and all(k.startswith("transformer.") for k in difference)
    up = next(k for k in difference if k.endswith("lora_B.weight"))
    assert difference[up].abs().max() > 0 and not torch.equal(difference[up], copier[up])  # two networks


@pytest.mark.parametrize("family, mode", [("flux", "ADDifT"), ("flux", "Multi-ADDifT"), ("sd3", "ADDifT"),
                                          ("zimage", "ADDifT")])
def test_addift_learns_the_pair_step(root, tmp_path, family, mode):
    """Steps alternate between the forward and the swapped problem: each one's loss falls."""
    extra = dict(lora_data_directory=str(root / "pairs")) if mode == "Multi-ADDifT" else {}
    config = flux_job(root, family, mode=mode, train_iterations=8, save_lora_name="addift", diff_use_diff_mask=True,
                      **FIXED_BATCH, **extra)
    result = run_job(config, output_dir=tmp_path)
    forward, swapped = result.losses[0::2], result.losses[1::2]
    if mode == "ADDifT":  # one pair: every forward step sees the same batch
        assert falls(forward) and falls(swapped), result.losses
    else:  # two pairs in turn
        assert falls(forward[0::2]) or falls(forward[1::2]), result.losses
    tensors, metadata = load_lora(result.path)
    version = {"flux": "flux1", "sd3": "sd3", "zimage": "zimage"}[family]
    assert metadata["ss_base_model_version"] == version and all(k.startswith("transformer.") for k in tensors)


@pytest.mark.parametrize("family", ["sd3", "zimage"])
def test_ileco_on_the_other_transformer_families(root, tmp_path, family):
    """iLECO through the same per-family objective: on one latent and one timestep its loss falls."""
    config = flux_job(root, family, mode="iLECO", train_iterations=8, train_learning_rate=1e-2, ileco_latent="once",
                      train_min_timesteps=500, train_max_timesteps=501, save_lora_name="ileco")
    result = run_job(config, output_dir=tmp_path)
    assert falls(result.losses), result.losses
    tensors, _ = load_lora(result.path)
    assert tensors and all(k.startswith("transformer.") for k in tensors)


def test_the_meta_trace_keeps_what_a_real_flux_step_keeps(root):
    components = load_model(str(root / "flux1-tiny.safetensors"))
    for part in (components.transformer, components.vae, *components.text_encoders):
        part.requires_grad_(False)
    spec = NetworkSpec(rank=4, alpha=4, blocks=list(ALL_BLOCK_IDS))
    meta, _, _ = estimate._meta_denoiser(components, spec, torch.float32, checkpointing=False)
    meta_bytes, meta_forward, meta_backward = estimate._trace_step(
        meta, estimate._meta_inputs(components, meta, 2, 16, 16, torch.float32))
    AdapterNetwork(components, spec).apply()
    with torch.no_grad():
        cond = encode_prompts(components, ["a red circle", "a blue square"])
    from diffusers import FluxPipeline

    real = dict(hidden_states=pack(torch.randn(2, 16, 16, 16)), timestep=torch.tensor([0.5, 0.5]),
                guidance=torch.ones(2), pooled_projections=cond.pooled, encoder_hidden_states=cond.hidden,
                txt_ids=torch.zeros(cond.hidden.shape[1], 3),
                img_ids=FluxPipeline._prepare_latent_image_ids(2, 8, 8, "cpu", torch.float32))
    with sdpa_kernel(SDPBackend.MATH):  # the CPU's flash kernel is not counted by torch's FLOP counter
        real_bytes, real_forward, real_backward = estimate._trace_step(components.transformer, real)
    assert meta_bytes == pytest.approx(real_bytes, rel=0.10)  # equal, measured
    assert (meta_forward, meta_backward) == pytest.approx((real_forward, real_backward), rel=0.02)
    assert meta_backward > meta_forward > 0


@pytest.mark.parametrize("precision", [ModelPrecision.INT8, ModelPrecision.FP8])
def test_an_8bit_base_holds_flux_and_trains(precision):
    """train_model_precision int8/fp8 on Flux: the transformer's and both encoders' Linear layers in 8 bits
    (T5 casts its `wo` input to that layer's weight dtype unless it is int8: fp8 bytes are kept as int8),
    outputs close to the float model's, and the adapter (on the transformer and CLIP-L) gets gradients."""
    from traintrain.models.quantize import QuantizedLinear
    from traintrain.models.tiny import build_tiny_components
    from traintrain.modes.flow_matching import flow_matching_step_loss

    components = build_tiny_components(Family.FLUX)
    latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    sigmas = torch.tensor([0.6])
    with torch.no_grad():
        cond = encode_prompts(components, ["a red circle"])
        expected = transformer_predict(components, latents, sigmas, cond)
    freeze_model(components, torch.device("cpu"), torch.float32, False, weights=precision)
    for part in (components.transformer, *components.text_encoders):
        assert any(isinstance(m, QuantizedLinear) for m in part.modules())
    with torch.no_grad():
        cond8 = encode_prompts(components, ["a red circle"])
        got = transformer_predict(components, latents, sigmas, cond8)
    assert (got - expected).abs().mean() < 0.05 * expected.abs().mean()
    network = AdapterNetwork(components, NetworkSpec(rank=2, alpha=2, blocks=list(ALL_BLOCK_IDS))).apply()
    cond8 = encode_prompts(components, ["a red circle"])  # through CLIP's adapters (block BASE) on 8-bit layers
    config = TrainConfig(train_min_timesteps=0, train_max_timesteps=1000)
    loss = flow_matching_step_loss(components, latents, cond8, config, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in network.parameters())


@pytest.fixture
def guidance_seen(monkeypatch) -> list:
    """The guidance input of every Flux transformer call (None when it has none); previews, which pass their own
    guidance scale, are not rendered."""
    from diffusers import FluxTransformer2DModel

    import traintrain.jobs.runner as runner

    seen: list = []
    original = FluxTransformer2DModel.forward

    def recording(self, *args, **kwargs):
        guidance = kwargs.get("guidance")
        seen.append(None if guidance is None else sorted(set(guidance.tolist())))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FluxTransformer2DModel, "forward", recording)
    monkeypatch.setattr(runner, "render_previews", lambda *args, **kwargs: None)
    return seen


@pytest.mark.parametrize("mode", ["LoRA", "iLECO", "Difference", "ADDifT"])
def test_every_flux_mode_gives_the_transformer_the_guidance_setting(root, tmp_path, guidance_seen, mode):
    config = flux_job(root, mode=mode, train_iterations=1, train_flux_guidance=3.5, save_lora_name="guided",
                      lora_data_directory=str(root / "pairs"), **FIXED_BATCH)
    run_job(config, output_dir=tmp_path)
    assert guidance_seen and all(values == [3.5] for values in guidance_seen), guidance_seen


def test_a_model_without_guidance_input_ignores_the_setting(guidance_seen):
    """Flux.1-schnell has no guidance embedder: the setting changes nothing there."""
    from diffusers import FluxTransformer2DModel

    from traintrain.models.tiny import build_tiny_components

    components = build_tiny_components(Family.FLUX)
    schnell = dict(components.transformer.config) | {"guidance_embeds": False}
    components.denoiser = FluxTransformer2DModel.from_config(schnell)
    latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cond = encode_prompts(components, ["a red circle"])
        losses = [image_step_loss(components, None, latents, cond, TrainConfig(train_flux_guidance=guidance),
                                  torch.Generator().manual_seed(0)) for guidance in (1.0, 3.5)]
        predictions = [predict(components, latents, torch.tensor([500]), cond,
                               TrainConfig(train_flux_guidance=guidance)) for guidance in (1.0, 3.5)]
    assert guidance_seen == [None] * 4
    assert torch.equal(losses[0], losses[1]) and torch.equal(predictions[0], predictions[1])


@pytest.mark.parametrize("family", [Family.FLUX, Family.SD3, Family.ZIMAGE])
def test_gradient_checkpointing_trains_as_without(family):
    """use_gradient_checkpointing on the transformer families: the same loss and adapter gradients (recomputed,
    not changed), and T5 (dropout 0.1) stays in eval mode, so a prompt encodes the same every time."""
    from traintrain.models.tiny import build_tiny_components
    from traintrain.modes.flow_matching import flow_matching_step_loss

    results = []
    for checkpointing in (False, True):
        components = build_tiny_components(family)
        freeze_model(components, torch.device("cpu"), torch.float32, checkpointing)
        assert components.denoiser.is_gradient_checkpointing is checkpointing
        torch.manual_seed(0)  # the same adapter both times
        network = AdapterNetwork(components, NetworkSpec(rank=2, alpha=2, blocks=list(ALL_BLOCK_IDS))).apply()
        for module in network.modules():
            if hasattr(module, "lora_up"):
                torch.nn.init.normal_(module.lora_up.weight, std=0.1)  # non-zero, so every factor gets a gradient
        first, again = (encode_prompts(components, ["a red circle"]) for _ in range(2))
        assert torch.equal(first.hidden, again.hidden)
        latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
        config = TrainConfig(train_min_timesteps=0, train_max_timesteps=1000)
        loss = flow_matching_step_loss(components, latents, first, config, torch.Generator().manual_seed(0))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in network.parameters()]))
    (plain_loss, plain_grads), (checkpointed_loss, checkpointed_grads) = results
    assert torch.allclose(plain_loss, checkpointed_loss, atol=1e-6)
    for plain, checkpointed in zip(plain_grads, checkpointed_grads, strict=True):
        assert torch.allclose(plain, checkpointed, atol=1e-5)
