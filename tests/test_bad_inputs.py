"""The bad-input matrix of docs/bad-inputs.md: every row gives one error line and exit code 2.

Each row runs the command line in-process; the table in the docs lists the same row ids, so a row
cannot be added to one without the other.
"""

from __future__ import annotations

import errno
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from traintrain import cli
from traintrain.cli import main
from traintrain.models.tiny import write_tiny_model

DOC = Path(__file__).parent.parent / "docs" / "bad-inputs.md"


class NotAWeight:
    """Any class in a pickle needs unsafe loading."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shared inputs: a tiny model, good and bad images, broken model files, settings files."""
    root = tmp_path_factory.mktemp("bad")
    w = {"root": root, "model": write_tiny_model("sd1", "single-file", root / "tiny.safetensors")}
    images = root / "images"
    images.mkdir()
    for index in range(2):
        Image.new("RGB", (64, 64), (index * 100, 50, 50)).save(images / f"{index}.png")
    w["images"] = images
    (root / "empty").mkdir()
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.png").write_bytes(b"not a png at all")
    (corrupt / "b.jpg").write_bytes(b"")
    bad_caption = root / "bad_caption"
    bad_caption.mkdir()
    Image.new("RGB", (64, 64)).save(bad_caption / "a.png")
    (bad_caption / "a.txt").write_bytes(b"caf\xe9 latin-1")
    Image.new("RGB", (64, 48)).save(root / "small.png")
    data = Path(w["model"]).read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": NotAWeight()}, root / "pickle.ckpt")
    (root / "truncated.ckpt").write_bytes((root / "pickle.ckpt").read_bytes()[:40])
    save_file({"weight": torch.zeros(2, 2)}, str(root / "not_sd.safetensors"))
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(root / "a_lora.safetensors"))
    nvfp4 = load_file(str(w["model"]))
    layer = next(key.removesuffix(".weight") for key, value in nvfp4.items() if value.ndim == 2 and "attn" in key)
    nvfp4[layer + ".comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    save_file(nvfp4, str(root / "model_nvfp4.safetensors"))
    (root / "model.onnx").write_bytes(b"onnx")
    (root / "empty_model").mkdir()
    for name, text in {
        "syntax.json": "{network_rank: 4", "list.json": "[1, 2]", "unknown.json": '{"network_rnk": 4}',
        "list_for_text.json": '{"save_lora_name": ["a"]}', "object_for_number.json": '{"train_learning_rate": {}}',
        "bad_enum.json": '{"train_optimizer": "Adam9000"}', "null_bool.json": '{"image_mirroring": null}',
        "second_pass.json": '{"2nd pass": 5}',
    }.items():
        (root / name).write_text(text)
    (root / "latin1.json").write_bytes(b'{"save_lora_name": "caf\xe9"}')
    (root / "folder.json").mkdir()
    (root / "taken").mkdir()
    (root / "taken" / "job.safetensors").write_bytes(b"previous")
    (root / "taken" / "job2_2steps.safetensors").write_bytes(b"previous")
    (root / "a_file").write_text("x")
    return w


def train(w, *extra, data=True, model=True, out="out"):
    args = ["train", "--output-dir", str(w["root"] / out)]
    if model:
        args += ["--model", str(w["model"])]
    if data:
        args += ["--data", str(w["images"])]
    return args + [str(a) for a in extra]


def model(w, name):
    return ["train", "--model", str(w["root"] / name), "--data", str(w["images"]), "--output-dir", str(w["root"] / "out")]


def config(w, name):
    return train(w, "--config", w["root"] / name)


# id: (argv builder, fragment of the one error line)
ROWS = {
    # command line
    "unknown-option": (lambda w: train(w, "--no-such-option"), "unrecognized arguments: --no-such-option"),
    "unknown-command": (lambda w: ["fly"], "invalid choice: 'fly'"),
    "set-without-value": (lambda w: train(w, "--set", "network_rank"), "expected KEY=VALUE"),
    "unknown-parameter": (lambda w: train(w, "--set", "network_rnk=4"), "did you mean 'network_rank'"),
    "bad-choice": (lambda w: train(w, "--set", "network_type=lokx"), "network_type: 'lokx' is not one of"),
    "below-minimum": (lambda w: train(w, "--set", "network_rank=0"), "network_rank: 0 is below the minimum 1"),
    "not-a-number": (lambda w: train(w, "--set", "train_learning_rate=fast"), "'fast' is not a number"),
    "bad-image-size": (lambda w: train(w, "--set", "image_size=500,300"), "multiples of 8"),
    "timesteps-crossed": (lambda w: train(w, "--set", "train_min_timesteps=900", "--set", "train_max_timesteps=100"),
                          "must be below train_max_timesteps"),
    "no-model": (lambda w: train(w, model=False), "no model given"),
    "unknown-preset": (lambda w: train(w, "--preset", "nope"), "unknown preset 'nope'"),
    "preset-path": (lambda w: train(w, "--preset", "../LoRA"), "preset name: '../LoRA' must be a plain name"),
    # settings / preset JSON
    "config-missing": (lambda w: config(w, "nope.json"), "settings file not found"),
    "config-folder": (lambda w: config(w, "folder.json"), "is a folder"),
    "config-syntax": (lambda w: config(w, "syntax.json"), "not valid JSON"),
    "config-not-utf8": (lambda w: config(w, "latin1.json"), "not valid JSON"),
    "config-not-object": (lambda w: config(w, "list.json"), "expected a JSON object of parameters, got a list"),
    "config-unknown-key": (lambda w: config(w, "unknown.json"), "unknown parameter 'network_rnk'"),
    "config-list-for-text": (lambda w: config(w, "list_for_text.json"), "save_lora_name: expected text, got a list"),
    "config-object-for-number": (lambda w: config(w, "object_for_number.json"),
                                 "train_learning_rate: expected a number, got an object"),
    "config-bad-enum": (lambda w: config(w, "bad_enum.json"), "train_optimizer: 'Adam9000' is not one of"),
    "config-null-boolean": (lambda w: config(w, "null_bool.json"), "image_mirroring: expected true or false, got null"),
    "config-2nd-pass-type": (lambda w: config(w, "second_pass.json"), "'2nd pass' must be an object"),
    # model files
    "model-missing": (lambda w: model(w, "nope.safetensors"), "model not found"),
    "model-truncated": (lambda w: model(w, "truncated.safetensors"), "truncated or corrupt safetensors file"),
    "model-truncated-ckpt": (lambda w: model(w, "truncated.ckpt"), "truncated or corrupt checkpoint"),
    "model-unsafe-pickle": (lambda w: model(w, "pickle.ckpt"), "need unsafe pickle loading"),
    "model-not-sd": (lambda w: model(w, "not_sd.safetensors"), "not a Stable Diffusion checkpoint"),
    "model-is-lora": (lambda w: model(w, "a_lora.safetensors"), "this is a LoRA/LyCORIS network, not a model"),
    "model-empty-folder": (lambda w: model(w, "empty_model"), "folder is not a diffusers model"),
    "model-quant-format": (lambda w: model(w, "model_nvfp4.safetensors"), "format, which is not read; give the"),
    "model-unknown-type": (lambda w: model(w, "model.onnx"), "unsupported model file type '.onnx'"),
    # images and prompts
    "data-missing": (lambda w: train(w, data=False) + ["--data", str(w["root"] / "nope")], "does not exist"),
    "data-empty": (lambda w: train(w, data=False) + ["--data", str(w["root"] / "empty")], "no images in"),
    "data-only-corrupt": (lambda w: train(w, data=False) + ["--data", str(w["root"] / "corrupt")], "no usable image"),
    "caption-not-utf8": (lambda w: train(w, data=False) + ["--data", str(w["root"] / "bad_caption")], "is not UTF-8"),
    "pair-different-size": (lambda w: train(w, "--mode", "Difference", "--set", f"original_image={w['images'] / '0.png'}",
                                            "--set", f"target_image={w['root'] / 'small.png'}", data=False),
                            "both must have the same size"),
    "pair-missing-original": (lambda w: train(w, "--mode", "Difference", "--set", f"target_image={w['root'] / 'small.png'}",
                                              data=False), "Difference needs original_image"),
    "pairs-none-found": (lambda w: train(w, "--mode", "Multi-ADDifT"), "no image pairs"),
    "ileco-no-prompt": (lambda w: train(w, "--mode", "iLECO", data=False), "iLECO needs original_prompt"),
    "resume-missing": (lambda w: train(w, "--set", "network_resume=nope.safetensors"), "network_resume: 'nope.safetensors' not found"),
    # names and output folder
    "save-name-slash": (lambda w: train(w, "--set", "save_lora_name=sub/job"), "save_lora_name: 'sub/job' must be a plain name"),
    "save-name-dotdot": (lambda w: train(w, "--set", "save_lora_name=..job"), "save_lora_name: '..job' must be a plain name"),
    "output-exists": (lambda w: train(w, "--set", "save_lora_name=job", out="taken"), "job.safetensors already exists"),
    "periodic-output-exists": (lambda w: train(w, "--set", "save_lora_name=job2", "--set", "save_per_steps=2",
                                               "--set", "train_iterations=3", out="taken"),
                               "job2_2steps.safetensors already exists"),
    "output-dir-is-file": (lambda w: train(w, out="a_file/out"), "cannot be created"),
    "inspect-not-a-lora": (lambda w: ["inspect", str(w["root"] / "nope.safetensors")], "LoRA file not found"),
}


def run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_line(code, err, fragment):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("traintrain: error: ")
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_row(row, world, capsys):
    argv, fragment = ROWS[row]
    code, err = run(capsys, argv(world))
    assert_one_line(code, err, fragment)
    assert not (world["root"] / "out").exists(), "nothing is written for bad input"


def test_disk_too_small(world, capsys, monkeypatch):
    """The run's files must fit: refused before the model loads, naming needed and free space."""
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    code, err = run(capsys, train(world, "--set", "save_per_steps=1", "--set", "train_iterations=5"))
    assert_one_line(code, err, "not enough disk space")
    assert re.search(r"saves 5 file\(s\) needing up to [\d.]+ MiB, but only 1000 bytes is free", err)


def test_environment_os_errors_are_one_line_but_bugs_keep_their_traceback(world, capsys, monkeypatch):
    def disk_full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/job.safetensors")

    monkeypatch.setitem(cli.COMMANDS, "train", disk_full)
    code, err = run(capsys, train(world))
    assert_one_line(code, err, "No space left on device: /data/out/job.safetensors")

    def bug(args):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/site-packages/missing.json")

    monkeypatch.setitem(cli.COMMANDS, "train", bug)
    with pytest.raises(FileNotFoundError):
        main(train(world))


def test_the_docs_table_lists_every_row():
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(encoding="utf-8"), re.MULTILINE))
    assert documented == set(ROWS) | {"disk-too-small", "disk-full-or-denied"}


def test_debug_shows_the_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "traintrain", "train", "--debug", "--preset", "../LoRA"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "UserError" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "traintrain: error: preset name: '../LoRA' must be a plain name without '/', '\\' or '..'"
    )
    plain = subprocess.run([sys.executable, "-m", "traintrain", "train", "--preset", "../LoRA"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
