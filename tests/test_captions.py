import pytest

from traintrain.data.captions import compose_caption, filename_tags, image_caption, read_caption, tag_frequency
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


@pytest.mark.parametrize("name, tags", [
    ("red_hair_smile_001.png", "red, hair, smile"),
    ("red hair,smile (2).png", "red hair, smile"),
    ("cat (1).jpg", "cat"),
    ("photo-3.webp", "photo"),
    ("x_01 (2).png", "x"),
    ("1girl_solo.png", "1girl, solo"),
    ("dog_id_12345.png", "dog"),  # the original's "_id_" suffix
    ("123.png", "123"),  # a name that is only a number stays
])
def test_filename_tags(name, tags):
    assert filename_tags(name) == tags


def test_filename_tag_replaces_the_caption_file(tmp_path):
    """As in the original: with image_use_filename_as_tag the caption file is not read."""
    image = tmp_path / "blue_sky_002.png"
    image.touch()
    image.with_suffix(".txt").write_text("ignored caption", encoding="utf-8")
    assert image_caption(image, "tt", use_filename=True) == "tt, blue, sky"
    assert image_caption(image, "tt") == "tt, ignored caption"
    assert image_caption(image, "", use_filename=True) == "blue, sky"
