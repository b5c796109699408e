import io

import numpy as np
import pytest
from PIL import Image, features

from traintrain.data.images import (
    BadImage,
    LoadedImage,
    crop_top_left,
    find_images,
    load_image,
    resize_cover_center_crop,
    resize_mask_cover_center_crop,
    TRANSPARENT_BACKGROUND,
)
from traintrain.errors import UserError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _touch_image(path, size=(4, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, RED).save(path, format="PNG")
    return path


def _pixel(loaded, xy=(0, 0)):
    return loaded.image.getpixel(xy)


# --- find_images -------------------------------------------------------------------------------


def test_find_images_walks_subfolders_any_case_and_sorts(tmp_path):
    for name in ["b.png", "A.JPG", "sub/c.Webp", "sub/deeper/d.TIFF", "e.jpeg", "f.bmp", "g.gif", "h.tif"]:
        _touch_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "b.caption").write_text("x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["A.JPG", "b.png", "e.jpeg", "f.bmp", "g.gif", "h.tif", "sub/c.Webp", "sub/deeper/d.TIFF"]


def test_find_images_accepts_pcx_and_ico(tmp_path):
    _touch_image(tmp_path / "a.pcx")
    _touch_image(tmp_path / "b.ICO")
    assert [p.name for p in find_images(str(tmp_path))] == ["a.pcx", "b.ICO"]


def test_find_images_skips_dot_files_and_dot_folders(tmp_path):
    _touch_image(tmp_path / "keep.png")
    _touch_image(tmp_path / ".hidden.png")
    _touch_image(tmp_path / "._keep.png")
    _touch_image(tmp_path / ".thumbnails" / "keep.png")
    assert find_images(tmp_path) == [tmp_path / "keep.png"]


def test_find_images_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_images(tmp_path / "nowhere")


def test_find_images_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no pictures")
    with pytest.raises(UserError, match="no images"):
        find_images(tmp_path)


# --- load_image: colour modes ------------------------------------------------------------------


def _saved(tmp_path, image, name, **save_args):
    path = tmp_path / name
    image.save(path, **save_args)
    return path


def test_rgb_has_no_mask(tmp_path):
    loaded = load_image(_saved(tmp_path, Image.new("RGB", (5, 3), BLUE), "rgb.png"))
    assert (loaded.image.mode, loaded.image.size, loaded.mask) == ("RGB", (5, 3), None)
    assert _pixel(loaded) == BLUE


def test_grayscale(tmp_path):
    loaded = load_image(_saved(tmp_path, Image.new("L", (4, 4), 100), "gray.png"))
    assert loaded.image.mode == "RGB" and _pixel(loaded) == (100, 100, 100)
    assert loaded.mask is None


def test_bilevel(tmp_path):
    loaded = load_image(_saved(tmp_path, Image.new("1", (4, 4), 1), "bw.png"))
    assert _pixel(loaded) == (255, 255, 255)


def test_grayscale_with_alpha(tmp_path):
    image = Image.new("LA", (4, 2), (50, 255))
    image.putpixel((0, 0), (50, 0))
    loaded = load_image(_saved(tmp_path, image, "la.png"))
    assert _pixel(loaded, (1, 0)) == (50, 50, 50)
    assert loaded.mask.shape == (2, 4) and loaded.mask.dtype == np.float32
    assert loaded.mask[0, 0] == 0.0 and loaded.mask[1, 3] == 1.0


def test_rgba_mask_keeps_partial_opacity(tmp_path):
    image = Image.new("RGBA", (4, 4), (*GREEN, 255))
    image.putpixel((3, 3), (*GREEN, 51))
    loaded = load_image(_saved(tmp_path, image, "rgba.png"))
    assert loaded.image.mode == "RGB" and _pixel(loaded) == GREEN
    assert loaded.mask[3, 3] == pytest.approx(0.2) and loaded.mask[0, 0] == 1.0


def test_fully_opaque_alpha_needs_no_mask(tmp_path):
    loaded = load_image(_saved(tmp_path, Image.new("RGBA", (4, 4), (*RED, 255)), "opaque.png"))
    assert loaded.mask is None


def test_palette(tmp_path):
    image = Image.new("RGB", (4, 4), RED).convert("P")
    loaded = load_image(_saved(tmp_path, image, "pal.png"))
    assert _pixel(loaded) == RED and loaded.mask is None


def test_palette_with_transparent_index(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([*RED, *GREEN] + [0] * 762)
    image.putpixel((0, 0), 0)
    path = _saved(tmp_path, image, "pal_t.png", transparency=0)
    loaded = load_image(path)
    assert _pixel(loaded, (1, 1)) == GREEN
    assert loaded.mask[0, 0] == 0.0 and loaded.mask[1, 1] == 1.0


def test_palette_with_per_entry_alpha(tmp_path):
    image = Image.new("P", (2, 2), 0)
    image.putpalette([*RED, *GREEN] + [0] * 762)
    image.putpixel((1, 1), 1)
    loaded = load_image(_saved(tmp_path, image, "pal_a.png", transparency=bytes([255, 102])))
    assert loaded.mask[0, 0] == 1.0 and loaded.mask[1, 1] == pytest.approx(0.4)


def test_cmyk(tmp_path):
    loaded = load_image(_saved(tmp_path, Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "cmyk.tif"))
    assert loaded.image.mode == "RGB" and _pixel(loaded) == RED


def test_cmyk_jpeg(tmp_path):
    loaded = load_image(_saved(tmp_path, Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "cmyk.jpg", quality=95))
    red, green, blue = _pixel(loaded)
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16)
    path = _saved(tmp_path, Image.fromarray(values), "gray16.png")
    assert Image.open(path).mode.startswith("I")
    loaded = load_image(path)
    assert [_pixel(loaded, xy)[0] for xy in [(0, 0), (1, 0), (0, 1), (1, 1)]] == [0, 100, 255, 200]


def test_32_bit_integer_grayscale(tmp_path):
    values = np.array([[0, 257 * 100]], dtype=np.int32)
    path = _saved(tmp_path, Image.fromarray(values), "int32.tif")
    assert Image.open(path).mode == "I"
    assert _pixel(load_image(path), (1, 0)) == (100, 100, 100)


def test_32_bit_integer_grayscale_already_8_bit_range(tmp_path):
    path = _saved(tmp_path, Image.fromarray(np.array([[0, 100]], dtype=np.int32)), "int8range.tif")
    assert _pixel(load_image(path), (1, 0)) == (100, 100, 100)


def test_float_grayscale_unit_range(tmp_path):
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    path = _saved(tmp_path, Image.fromarray(values), "float.tif")
    assert Image.open(path).mode == "F"
    loaded = load_image(path)
    assert [_pixel(loaded, (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_float_grayscale_byte_range(tmp_path):
    path = _saved(tmp_path, Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32)), "floatb.tif")
    loaded = load_image(path)
    assert [_pixel(loaded, (x, 0))[0] for x in range(3)] == [0, 100, 255]


# --- load_image: orientation and animation -----------------------------------------------------


@pytest.mark.parametrize("fmt, name", [("PNG", "rot.png"), ("JPEG", "rot.jpg")])
def test_exif_orientation_is_applied(tmp_path, fmt, name):
    image = Image.new("RGB", (32, 16), BLUE)
    image.paste(RED, (0, 0, 16, 16))  # red on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise
    path = tmp_path / name
    image.save(path, format=fmt, exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.image.size == (16, 32)
    top, bottom = np.asarray(loaded.image)[4, 8], np.asarray(loaded.image)[28, 8]
    assert top[0] > 200 and top[2] < 60  # the stored left side is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def _animated(tmp_path, name, **save_args):
    frames = [Image.new("RGB", (8, 8), color) for color in (RED, GREEN, BLUE)]
    path = tmp_path / name
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0, **save_args)
    return path


def test_animated_gif_first_frame(tmp_path):
    path = _animated(tmp_path, "anim.gif")
    assert Image.open(path).n_frames == 3
    loaded = load_image(path)
    assert _pixel(loaded) == RED and loaded.image.size == (8, 8)


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_animated_webp_first_frame(tmp_path):
    path = _animated(tmp_path, "anim.webp", lossless=True)
    assert Image.open(path).n_frames == 3
    assert _pixel(load_image(path)) == RED


def test_gif_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([*RED, *GREEN] + [0] * 762)
    image.putpixel((0, 0), 0)
    loaded = load_image(_saved(tmp_path, image, "t.gif", transparency=0))
    assert _pixel(loaded, (2, 2)) == GREEN and loaded.mask[0, 0] == 0.0


# --- load_image: bad files ---------------------------------------------------------------------


def _png_bytes(size=(64, 64)):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg_bytes(size=(64, 64)):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.png", b"", "empty file"),
        ("text.jpg", b"just some text, not a picture\n" * 10, "not an image"),
        ("truncated.png", _png_bytes()[:200], "truncated"),
        ("truncated.jpg", _jpeg_bytes()[:400], "Truncated"),
        ("corrupt.png", _png_bytes()[:60] + bytes(range(256)) * 8, "unrecognized data"),
        ("header_only.gif", b"GIF89a", "not an image"),
    ],
)
def test_bad_files_raise_bad_image_naming_the_path(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BadImage, match=reason) as caught:
        load_image(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.path == path
    assert isinstance(caught.value, UserError)


def test_missing_file_is_bad_image(tmp_path):
    with pytest.raises(BadImage):
        load_image(tmp_path / "gone.png")


# --- resizing ----------------------------------------------------------------------------------


def _stripes(width, height):
    """Left third red, middle third green, right third blue."""
    image = Image.new("RGB", (width, height), GREEN)
    image.paste(RED, (0, 0, width // 3, height))
    image.paste(BLUE, (2 * width // 3, 0, width, height))
    return image


@pytest.mark.parametrize("source, frame", [((300, 100), (64, 64)), ((90, 270), (48, 80)), ((50, 50), (128, 96))])
def test_resize_gives_exact_frame(source, frame):
    assert resize_cover_center_crop(Image.new("RGB", source), *frame).size == frame


def test_resize_crops_the_centre():
    fitted = np.asarray(resize_cover_center_crop(_stripes(300, 100), 64, 64))
    assert (fitted[:, 4:60] == GREEN).all()  # the wide image keeps only its middle third


def test_resize_cover_upscales_small_images():
    fitted = resize_cover_center_crop(Image.new("RGB", (10, 20), RED), 64, 64)
    assert fitted.size == (64, 64) and fitted.getpixel((32, 32)) == RED


def test_mask_resize_matches_image_crop():
    mask = np.zeros((100, 300), dtype=np.float32)
    mask[:, 100:200] = 1.0  # opaque middle third
    fitted = resize_mask_cover_center_crop(mask, 64, 64)
    assert fitted.shape == (64, 64) and fitted.dtype == np.float32
    assert fitted.min() >= 0.0 and fitted.max() <= 1.0
    assert (fitted[:, 4:60] == 1.0).all()


def test_loaded_image_fit_and_mirror():
    mask = np.zeros((100, 300), dtype=np.float32)
    mask[:, :150] = 1.0
    loaded = LoadedImage(_stripes(300, 100), mask).fit(96, 32)
    assert loaded.image.size == (96, 32) and loaded.mask.shape == (32, 96)
    mirrored = loaded.mirrored()
    assert mirrored.image.getpixel((0, 16)) == BLUE and loaded.image.getpixel((0, 16)) == RED
    assert mirrored.mask[16, -1] == 1.0 and mirrored.mask[16, 0] == 0.0


def test_mirror_without_mask():
    assert LoadedImage(_stripes(30, 10), None).mirrored().mask is None


@pytest.mark.parametrize(
    "source, frame, expected",
    [((300, 100), (64, 64), (0, 64)), ((100, 300), (64, 64), (64, 0)), ((64, 64), (64, 64), (0, 0))],
)
def test_crop_top_left_in_scaled_pixels(source, frame, expected):
    assert crop_top_left(source, *frame) == expected


@pytest.mark.parametrize("name", ["a.bmp", "a.pcx", "a.ico", "a.tiff", "a.gif", "a.jpg", "a.png", "a.webp"])
def test_every_listed_format_loads(tmp_path, name):
    if name.endswith("webp") and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    loaded = load_image(_saved(tmp_path, Image.new("RGB", (16, 16), RED), name))
    red, green, blue = _pixel(loaded, (8, 8))
    assert loaded.image.size == (16, 16) and red > 240 and green < 15 and blue < 15


def test_transparent_background_ajust_composites_onto_white_and_keeps_the_mask(tmp_path):
    """image_use_transparent_background_ajust: the VAE sees white, not the hidden colour under alpha 0."""
    image = Image.new("RGBA", (4, 4), (*GREEN, 255))
    image.putpixel((0, 0), (*RED, 0))  # fully transparent, hidden red
    image.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black
    path = _saved(tmp_path, image, "cutout.png")
    plain = load_image(path)
    assert _pixel(plain) == RED  # without the option: the hidden colour
    white = load_image(path, background=TRANSPARENT_BACKGROUND)
    assert TRANSPARENT_BACKGROUND == (255, 255, 255)
    assert _pixel(white) == (255, 255, 255)
    assert all(abs(c - 127) <= 1 for c in _pixel(white, (1, 0)))  # blended half way
    assert _pixel(white, (3, 3)) == GREEN  # opaque pixels untouched
    assert np.array_equal(white.mask, plain.mask) and white.mask[0, 0] == 0.0


def test_transparent_background_leaves_opaque_images_alone(tmp_path):
    path = _touch_image(tmp_path / "red.png")
    loaded = load_image(path, background=TRANSPARENT_BACKGROUND)
    assert loaded.mask is None and _pixel(loaded) == RED
