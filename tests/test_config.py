import json
from dataclasses import fields

import pytest

from traintrain.config import ALL_BLOCK_IDS, LRScheduler, NetworkType, TrainConfig, default_settings
from traintrain.errors import UserError
from traintrain.presets import load_preset, preset_names

# A non-default value for every parameter, as a user might write it in JSON.
CHANGED = {
    "mode": "iLECO", "model": "m.safetensors", "model_vae": "vae.safetensors", "original_prompt": "red",
    "target_prompt": "blue",
    "negative_prompt": "ugly", "original_image": "a.png", "target_image": "b.png",
    "network_type": "c3lier", "network_rank": 4, "network_alpha": 2.5, "lora_data_directory": "imgs",
    "lora_trigger_word": "sks", "network_blocks": ["IN01", "OUT03"], "train_iterations": 7,
    "image_size": [768, 512], "train_batch_size": 3, "train_learning_rate": 0.002, "train_optimizer": "Prodigy",
    "train_lr_scheduler": "cosine_with_restarts", "save_lora_name": "x", "use_gradient_checkpointing": True,
    "network_conv_rank": 2, "network_conv_alpha": 1.0, "network_element": "CrossAttention",
    "train_lr_step_rules": "1:10,0.1", "train_lr_scheduler_num_cycles": 3, "train_lr_scheduler_power": 2.0,
    "train_lr_scheduler_settings": "T_mult=2",
    "train_lr_warmup_steps": 5, "train_textencoder_learning_rate": 1e-5, "train_min_timesteps": 10,
    "train_max_timesteps": 900, "image_buckets_step": 128, "image_min_length": 256, "image_max_ratio": 3.0,
    "sub_image_num": 2, "image_mirroring": True, "save_per_steps": 100, "save_overwrite": True,
    "save_as_json": True, "model_v_pred": True,
    "model_use_ema": True, "train_model_precision": "bf16", "train_lora_precision": "bf16",
    "save_precision": "fp32", "train_seed": 42, "train_snr_gamma": 0.0, "diff_save_1st_pass": True,
    "diff_1st_pass_only": True, "diff_load_1st_pass": "copy.safetensors", "use_2nd_pass_settings": True,
    "logging_verbose": True, "logging_save_csv": True, "2nd pass": {"network_rank": 2},
    "network_strength": 0.5, "network_resume": "previous.safetensors",
    "image_num_multiply": 3, "image_disable_upscale": True, "image_alpha_mask": False, "latent_cache_dir": "cache",
    "diff_alt_ratio": -0.5, "diff_revert_original_target": True, "diff_use_diff_mask": True,
    "diff_target_name": "_after", "preview_prompts": "a cat;a dog", "preview_every_steps": 50,
    "preview_sampling_steps": 8, "preview_guidance": 4.5,
    "train_optimizer_settings": "weight_decay=0.1; betas=0.9,0.99", "train_vae_precision": "bf16",
    "train_loss_function": "smooth_L1", "train_noise_offset": 0.05, "logging_tensorboard": True,
    "train_nan_policy": "skip", "train_nan_skip_limit": 3,
    "image_use_filename_as_tag": True, "image_use_transparent_background_ajust": True,
    "gradient_accumulation_steps": 4, "train_fixed_timsteps_in_batch": True, "gen_noise_scheduler": "Euler a",
    "network_train_text_encoder": True, "diff_use_fixed_noise": True, "save_state": True,
    "ileco_latent": "once", "train_sync_every": 5, "train_estimate": True,
    "train_compile": True, "train_flux_guidance": 3.5,
}


def test_changed_covers_every_parameter():
    names = {f.name for f in fields(TrainConfig)} - {"second_pass"}
    assert names == set(CHANGED) - {"2nd pass"}


def test_every_parameter_round_trips_through_json(tmp_path):
    config = TrainConfig.from_json_dict(CHANGED)
    path = tmp_path / "settings.json"
    config.save_json(path)
    again = TrainConfig.load_json(path)
    assert again == config
    data = json.loads(path.read_text())
    for key, value in CHANGED.items():
        assert data[key] == value, key
    for name in CHANGED:
        if name != "2nd pass":
            assert getattr(again, name) != getattr(TrainConfig(), name), f"{name} kept its default"


def test_default_settings_are_a_validated_configs():
    """What `traintrain train --help` prints, read from the fields without validating (which loads the modes)."""
    assert default_settings() == TrainConfig().to_json_dict()


def test_defaults_follow_behavior():
    c = TrainConfig()
    assert (c.network_type, c.network_rank, c.network_alpha, c.train_iterations) == (NetworkType.LIERLA, 16, 8, 1000)
    assert c.network_blocks == list(ALL_BLOCK_IDS) and c.image_size == [512, 512]
    assert c.train_lr_scheduler == LRScheduler.COSINE and c.train_seed == -1 and c.output_name == "untitled"


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("network_type", "lokx", "network_type: 'lokx' is not one of: lierla, c3lier"),
        ("train_lr_scheduler", "cosinus", "cosine, cosine_with_restarts"),
        ("mode", "lecco", "LoRA, iLECO, Difference"),
        ("network_blocks", "IN01,IN99", "'IN99' is not one of: BASE, IN00"),
        ("network_rank", "0", "network_rank: 0 is below the minimum 1"),
        ("network_rank", "four", "network_rank: 'four' is not a number"),
        ("image_size", "768,500", "image_size"),
        ("image_mirroring", "maybe", "use true or false"),
        ("train_snr_gamma", "30", "above the maximum 20"),
    ],
)
def test_bad_values_name_field_and_choices(key, value, fragment):
    with pytest.raises(UserError) as info:
        TrainConfig().with_values(**{key: value})
    assert fragment in str(info.value)


def test_unknown_parameter_suggests_the_closest():
    with pytest.raises(UserError, match="unknown parameter 'network_rnk'.*network_rank"):
        TrainConfig().with_values(network_rnk="4")


def test_text_values_are_parsed_like_the_command_line():
    c = TrainConfig().with_values(
        mode="ileco", network_blocks="in01, OUT03", image_size="768,512", image_mirroring="true", train_learning_rate="5e-4"
    )
    assert c.mode == "iLECO" and c.network_blocks == ["IN01", "OUT03"]
    assert c.image_size == [768, 512] and c.image_mirroring is True and c.train_learning_rate == 5e-4


def test_single_image_size_is_square_and_order_is_kept():
    assert TrainConfig(image_size="512").image_size == [512, 512]
    assert TrainConfig(image_size="512,768").image_size == [512, 768]


def test_original_extension_presets_load():
    legacy = {
        "network_type": "lierla", "network_rank": "16", "network_alpha": "8", "image_size(height, width)": "512",
        "train_learning_rate": "1e-4", "network_blocks(BASE = TextEncoder)": ["BASE", "IN00"],
        "train_fixed_timsteps_in_batch": False, "logging_save_csv": "", "mode": "Difference", "vae": "None",
        "original prompt": "", "target prompt": "", "use_2nd_pass_settings": True,
        "2nd pass": {"network_rank": "4", "network_alpha": "4", "train_learning_rate": "1e-4", "network_type": "lierla"},
    }
    c = TrainConfig.from_json_dict(legacy)
    assert c.network_rank == 16 and c.network_blocks == ["BASE", "IN00"] and c.logging_save_csv is False
    assert c.second_pass == {"network_rank": 4, "network_alpha": 4.0}  # only what differs
    second = c.for_second_pass()
    assert (second.network_rank, second.network_alpha, second.train_learning_rate) == (4, 4.0, 1e-4)
    assert c.model_vae == ""  # the original's VAE dropdown "None": the model's own VAE
    chosen = TrainConfig.from_json_dict({**legacy, "vae": "/models/VAE/vae-ft-mse-840000.safetensors"})
    assert chosen.model_vae == "/models/VAE/vae-ft-mse-840000.safetensors"


def test_shipped_presets():
    assert preset_names() == [
        "ADDifT_Action_SD1.5", "ADDifT_Action_XL", "ADDifT_Style_SD1.5", "ADDifT_Style_XL",
        "Difference", "Difference_Use2ndPass", "LoRA", "iLECO",
    ]
    lora, ileco = load_preset("lora"), load_preset("iLECO")
    diff, diff2 = load_preset("Difference"), load_preset("Difference_Use2ndPass")
    assert (lora.network_rank, lora.network_alpha, lora.train_iterations, lora.train_learning_rate) == (16, 8, 1000, 1e-4)
    assert (ileco.network_rank, ileco.network_alpha, ileco.train_iterations, ileco.train_learning_rate) == (4, 8, 300, 5e-4)
    assert (diff.network_rank, diff.network_alpha, diff.train_iterations, diff.train_learning_rate) == (16, 16, 500, 5e-4)
    assert diff2.use_2nd_pass_settings and diff2.for_second_pass().network_rank == 4
    assert diff2.for_second_pass().train_learning_rate == 1e-4
    with pytest.raises(UserError, match="unknown preset"):
        load_preset("nope")


@pytest.mark.parametrize("name, lr, strength, timesteps, revert", [
    ("ADDifT_Action_SD1.5", 1e-4, 1.0, (500, 1000), False),
    ("ADDifT_Action_XL", 2e-4, 1.0, (500, 1000), False),
    ("ADDifT_Style_SD1.5", 5e-5, 5.0, (200, 400), True),
    ("ADDifT_Style_XL", 2e-4, 2.0, (200, 400), True),
])
def test_shipped_addift_presets(name, lr, strength, timesteps, revert):
    """The original's ADDifT presets: rank 4 / alpha 1, CAME, batch 1, the settings saved as JSON."""
    preset = load_preset(name)
    assert preset.mode == "ADDifT" and preset.save_lora_name == name.replace("XL", "SDXL")
    assert (preset.network_rank, preset.network_alpha, preset.train_batch_size) == (4, 1.0, 1)
    assert preset.train_optimizer.value == "CAME" and preset.save_as_json
    assert (preset.train_learning_rate, preset.network_strength) == (lr, strength)
    assert (preset.train_min_timesteps, preset.train_max_timesteps) == timesteps
    assert preset.diff_revert_original_target is revert
    assert preset.train_lr_scheduler.value == "cosine_annealing" and preset.train_lr_scheduler_settings == "eta_min=0.00001"
    assert ("BASE" in preset.network_blocks) is name.endswith("SD1.5")  # the XL ones leave the text encoders alone


def test_original_options_in_legacy_presets_take_effect():
    legacy = {
        "mode": "ADDifT", "train_textencoder_learning_rate": "", "image_use_filename_as_tag": True,
        "image_use_transparent_background_ajust": True, "diff_use_fixed_noise": True,
        "train_fixed_timsteps_in_batch": True, "gradient_accumulation_steps": "3", "gen_noise_scheduler": "Euler a",
        "network_train_text_encoder": True,
    }
    c = TrainConfig.from_json_dict(legacy)
    assert c.train_textencoder_learning_rate == 0.0  # "" = unset in the original
    assert c.image_use_filename_as_tag and c.image_use_transparent_background_ajust and c.diff_use_fixed_noise
    assert c.train_fixed_timsteps_in_batch and c.network_train_text_encoder
    assert c.gradient_accumulation_steps == 3 and c.gen_noise_scheduler.value == "Euler a"
    with pytest.raises(UserError, match="gradient_accumulation_steps"):
        TrainConfig(gradient_accumulation_steps=0)


def test_bad_json_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        TrainConfig.load_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        TrainConfig.load_json(path)
