"""Crash-safe writes: old file kept on failure, normal permissions, folders, stale temporaries, line logs."""

import os
import stat

import pytest

from traintrain.errors import UserError
from traintrain.fileio import (
    LineAppender, atomic_folder, atomic_path, check_plain_name, remove_stale_temps, write_text_atomic,
)


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    final = tmp_path / "a.txt"
    write_text_atomic(final, "good")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert final.read_text() == "good"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_files_get_the_usual_permissions_not_mkstemps_private_ones(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_folder(final) as tmp:
            (tmp / "unet").mkdir()
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
    with atomic_folder(final) as tmp:
        (tmp / "unet").mkdir()
        (tmp / "unet" / "config.json").write_text("{}")
    assert (final / "unet" / "config.json").read_text() == "{}"
    assert os.listdir(tmp_path) == ["model"]


def test_stale_temporaries_of_one_name_are_removed_and_others_kept(tmp_path):
    (tmp_path / ".job.safetensors.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".job_2steps.safetensors.def456.tmp").write_bytes(b"half")
    (tmp_path / "job.safetensors").write_bytes(b"good")
    removed = remove_stale_temps(tmp_path / "job.safetensors")
    assert [p.name for p in removed] == [".job.safetensors.abc123.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".job_2steps.safetensors.def456.tmp", "job.safetensors"]


def test_line_appender_writes_whole_lines(tmp_path):
    log = LineAppender(tmp_path / "log.csv")
    log.write_line("1,2")
    log.write_line("3,4\n")
    assert (tmp_path / "log.csv").read_text() == "1,2\n3,4\n"  # visible before close
    log.close()
    log.close()


@pytest.mark.parametrize("name", ["a/b", "..", "../x", "a\\b", "x..y", "", "a\0b"])
def test_names_with_path_parts_are_refused(name):
    with pytest.raises(UserError, match="plain name"):
        check_plain_name(name, "save_lora_name")


def test_plain_names_pass():
    assert check_plain_name("my lora.v2", "save_lora_name") == "my lora.v2"
