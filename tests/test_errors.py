"""Errors are data: the core names a setting, a problem and a fix, never a face's words."""

import ast
from pathlib import Path

import pytest

import traintrain
from traintrain.cli import build_parser, render_user_error
from traintrain.config import TrainConfig
from traintrain.errors import OUTPUT_DIR, UserError

SOURCE = Path(traintrain.__file__).parent
FACES = {"cli.py", "cli_processes.py", "cli_progress.py", "cli_queue.py", "cli_ui.py"}  # the command-line face may name its flags


def cli_flags() -> set[str]:
    """Every option string of every `traintrain` command."""
    parser, flags = build_parser(), set()
    stack = [parser]
    while stack:
        current = stack.pop()
        for action in current._actions:
            flags.update(s for s in action.option_strings if s.startswith("--"))
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                stack.extend(action.choices.values())
    return flags - {"--help"}


def core_strings(root: Path = SOURCE):
    """(file, line, text) of every string literal in the core that is not a docstring."""
    for path in sorted(root.rglob("*.py")):
        if path.name in FACES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                yield path.relative_to(root), node.lineno, node.value


def test_no_core_message_names_a_command_line_flag():
    flags = cli_flags()
    assert {"--model", "--data", "--output-dir", "--resume", "--tokenizer"} <= flags
    found = [f"{file}:{line}: {text!r}" for file, line, text in core_strings()
             if any(flag in text for flag in flags) or "traintrain train" in text]
    assert not found, "\n".join(found)


def test_the_scan_catches_a_flag(tmp_path):
    """The scan is real: a core file with a flag in a message is found."""
    fake = tmp_path / "traintrain"
    fake.mkdir()
    (fake / "bad.py").write_text('def f():\n    """--model is fine in a docstring."""\n    raise ValueError("pass --model PATH")\n')
    assert [text for _, _, text in core_strings(fake)] == ["pass --model PATH"]


def test_a_user_error_carries_field_problem_and_fix():
    error = UserError("image folder x does not exist", "choose an existing folder", field="lora_data_directory")
    assert (error.field, error.problem, error.fix) == ("lora_data_directory", "image folder x does not exist",
                                                       "choose an existing folder")
    assert error.message == "image folder x does not exist; choose an existing folder"
    assert str(error) == "lora_data_directory: image folder x does not exist; choose an existing folder"
    assert str(UserError("no field here")) == "no field here"


@pytest.mark.parametrize(
    "field, rendered",
    [
        ("lora_data_directory", "--data: bad; fix it"),
        ("model", "--model: bad; fix it"),
        (OUTPUT_DIR, "--output-dir: bad; fix it"),
        ("network_rank", "network_rank: bad; fix it"),
        (None, "bad; fix it"),
    ],
)
def test_the_cli_names_the_field_as_its_flag(field, rendered):
    assert render_user_error(UserError("bad", "fix it", field=field)) == rendered


def test_config_errors_name_their_field():
    with pytest.raises(UserError) as info:
        TrainConfig().with_values(network_rank="0")
    assert info.value.field == "network_rank" and "below the minimum 1" in info.value.problem
    with pytest.raises(UserError) as info:
        TrainConfig.from_json_dict({"train_optimizer": "Adam9000"}, source="p.json")
    assert info.value.field == "train_optimizer" and info.value.problem.endswith("(in p.json)")
