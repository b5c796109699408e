import pytest

from traintrain.data.captions import compose_caption, read_caption, tag_frequency
from traintrain.errors import UserError


def test_no_caption_file(tmp_path):
    assert read_caption(tmp_path / "a.png") is None


@pytest.mark.parametrize("suffix", [".txt", ".caption"])
def test_either_caption_file_is_read_and_stripped(tmp_path, suffix):
    (tmp_path / f"a{suffix}").write_text("  1girl, white background \n", encoding="utf-8")
    assert read_caption(tmp_path / "a.png") == "1girl, white background"


def test_txt_beats_caption(tmp_path):
    (tmp_path / "a.txt").write_text("from txt", encoding="utf-8")
    (tmp_path / "a.caption").write_text("from caption", encoding="utf-8")
    assert read_caption(str(tmp_path / "a.png")) == "from txt"


def test_caption_matches_full_stem(tmp_path):
    (tmp_path / "photo.v2.txt").write_text("right", encoding="utf-8")
    (tmp_path / "photo.txt").write_text("wrong", encoding="utf-8")
    assert read_caption(tmp_path / "photo.v2.JPG") == "right"


def test_utf8_with_bom(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufeffネコ, cat".encode("utf-8"))
    assert read_caption(tmp_path / "a.png") == "ネコ, cat"


def test_utf8_without_bom(tmp_path):
    (tmp_path / "a.txt").write_bytes("café, ネコ".encode("utf-8"))
    assert read_caption(tmp_path / "a.png") == "café, ネコ"


def test_empty_caption_file_is_empty_text(tmp_path):
    (tmp_path / "a.txt").write_text("\n", encoding="utf-8")
    assert read_caption(tmp_path / "a.png") == ""


def test_bad_utf8_names_the_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("café".encode("cp1252"))
    with pytest.raises(UserError, match="UTF-8") as caught:
        read_caption(tmp_path / "a.png")
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "trigger, caption, expected",
    [
        ("sks", "1girl, smile", "sks, 1girl, smile"),
        ("sks", None, "sks"),
        ("sks", "", "sks"),
        (None, "1girl", "1girl"),
        ("", "1girl", "1girl"),
        ("  ", " 1girl ", "1girl"),
        (" sks ", " 1girl ", "sks, 1girl"),
        ("", None, ""),
        (None, None, ""),
    ],
)
def test_compose_caption(trigger, caption, expected):
    assert compose_caption(trigger, caption) == expected


def test_tag_frequency_counts_like_kohya():
    captions = ["sks, 1girl, Smile", "sks,1girl , ,", "SKS, white background", ""]
    assert tag_frequency(captions) == {"sks": 3, "1girl": 2, "smile": 1, "white background": 1}


def test_tag_frequency_of_nothing():
    assert tag_frequency([]) == {}
