"""The command line: one-line errors with exit code 2, help that documents every parameter."""

import subprocess
import sys
from dataclasses import fields

from traintrain.cli import main
from traintrain.config import TrainConfig


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_model_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--model", str(tmp_path / "nope.safetensors"), "--data", str(tmp_path))
    assert_one_line_error(code, err, "model not found", "nope.safetensors")


def test_empty_data_folder(capsys, tmp_path):
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "train", "--model", str(model), "--data", str(tmp_path / "empty"))
    assert_one_line_error(code, err, "empty")
    assert not (tmp_path / "output").exists()


def test_unknown_parameter(capsys):
    code, _, err = run_cli(capsys, "train", "--set", "network_rnk=4")
    assert_one_line_error(code, err, "unknown parameter 'network_rnk'", "network_rank")


def test_bad_value_and_bad_option(capsys):
    code, _, err = run_cli(capsys, "train", "--set", "network_type=lokx")
    assert_one_line_error(code, err, "network_type", "lierla, c3lier")
    code, _, err = run_cli(capsys, "train", "--no-such-option")
    assert_one_line_error(code, err, "--no-such-option")
    code, _, err = run_cli(capsys, "train", "--set", "network_rank")
    assert_one_line_error(code, err, "KEY=VALUE")


def test_unknown_preset_and_unsafe_save_name(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--preset", "nope")
    assert_one_line_error(code, err, "unknown preset", "LoRA")
    (tmp_path / "img").mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "img" / "a.png")
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    code, _, err = run_cli(capsys, "train", "--model", str(model), "--data", str(tmp_path / "img"), "--set", "save_lora_name=../evil")
    assert_one_line_error(code, err, "save_lora_name")


def test_help_documents_every_parameter(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for f in fields(TrainConfig):
        if f.name != "second_pass":
            assert f"  {f.name}" in out, f.name
    for option in ("--preset", "--config", "--mode", "--model", "--data", "--output-dir", "--set"):
        assert option in out


def test_help_and_usage_errors_answer_without_importing_torch():
    """--help and a mistyped command answer at once: torch, diffusers and the modes load only for a command."""
    script = ("import sys\nfrom traintrain.cli import main\n"
              "codes = [main(['--help']), main(['train', '--help']), main(['trian'])]\n"
              "print(codes, sorted(name for name in ('torch', 'diffusers', 'traintrain.modes.registry') "
              "if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines()[-1] == "[0, 0, 2] []", result.stdout + result.stderr


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "traintrain", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "train" in result.stdout and "tiny-model" in result.stdout
