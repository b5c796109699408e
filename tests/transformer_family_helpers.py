"""Shared parts of the transformer families' tests (Flux, SD3, Z-Image): their tiny models, the
settings a bare flow-matching step needs, and the checks every family passes the same way."""

from __future__ import annotations

import copy

import torch

from traintrain.choices import ALL_BLOCK_IDS
from traintrain.config import TrainConfig
from traintrain.models.encoding import encode_prompts
from traintrain.models.tiny import build_tiny_components
from traintrain.modes.flow_matching import flow_matching_step_loss, transformer_predict
from traintrain.networks.network import AdapterNetwork, NetworkSpec


def frozen_tiny(family):
    """The family's tiny model with every part frozen, as a module fixture holds it."""
    components = build_tiny_components(family)
    for part in (components.transformer, components.vae, *components.text_encoders):
        part.requires_grad_(False)
    return components


def all_blocks_spec(**values) -> NetworkSpec:
    return NetworkSpec(**({"blocks": list(ALL_BLOCK_IDS)} | values))


def flow_config(**values) -> TrainConfig:
    """Settings for a bare flow-matching step outside a job."""
    settings = dict(model="unused", lora_data_directory=".", network_rank=4, network_alpha=2,
                    train_min_timesteps=0, train_max_timesteps=1000)
    return TrainConfig(**(settings | values))


def assert_same_weights(first, second) -> None:
    a, b = first.state_dict(), second.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[key], b[key]) for key in a)


def assert_lora_training_lowers_the_loss(tiny, prompts: list[str], steps: int) -> None:
    """A LoRA on a copy of `tiny`, trained on one fixed batch (same noise and timesteps every step):
    its flow-matching loss must fall."""
    components = copy.deepcopy(tiny)
    network = AdapterNetwork(components, all_blocks_spec(rank=4, alpha=4)).apply()
    latents = torch.randn(len(prompts), 16, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cond = encode_prompts(components, prompts)
    optimizer = torch.optim.Adam(network.unet_parameters(), lr=3e-2)
    config = flow_config()
    losses = []
    for _ in range(steps):
        loss = flow_matching_step_loss(components, latents, cond, config, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


class EncoderWatch:
    """Where the offloaded text encoder of class `name` is sent (models/encoder_offload.py), and how often it had
    run since it was first sent: a job offloads it once the prompts are cached, so it should run 0 times until
    it is sent back after the loop."""

    def __init__(self, monkeypatch, name: str):
        from traintrain.models import encoder_offload

        self.moves: list[tuple[str, int]] = []  # (device type, runs since the first move)
        self.runs = 0
        move = encoder_offload._move

        def recording_move(model, device):
            if type(model).__name__ == name:
                if not self.moves:
                    model.register_forward_hook(lambda *_: setattr(self, "runs", self.runs + 1))
                self.moves.append((device.type, self.runs))
            move(model, device)

        monkeypatch.setattr(encoder_offload, "_move", recording_move)


def clip_outputs(encoder, tokenizer) -> torch.Tensor:
    """A CLIP encoder's last and penultimate states and pooled output (projected where the model projects it,
    as SD3's do) for a prompt, side by side."""
    ids = tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        output = encoder(ids, output_hidden_states=True)
    pooled = output.text_embeds if hasattr(output, "text_embeds") else output.pooler_output
    return torch.cat([output.hidden_states[-1][0].flatten(), output.hidden_states[-2][0].flatten(), pooled[0]])


def fixed_predictions(prompts_from, *models) -> list[torch.Tensor]:
    """Each model's transformer output on the same noisy latents, noise levels and prompts (encoded by
    `prompts_from`): what the tests compare between a model and its reloaded or adapted copies."""
    noisy = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cond = encode_prompts(prompts_from, ["a photo of a cat", "dog"])
        sigmas = torch.tensor([0.6, 0.3])
        return [transformer_predict(model, noisy, sigmas, cond) for model in models]
