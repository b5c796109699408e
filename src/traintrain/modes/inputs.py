"""Checks of the inputs that several modes share: an image folder, or a pair of images."""

from __future__ import annotations

from pathlib import Path

from traintrain.data.captions import read_caption
from traintrain.data.images import BadImage, find_images, load_image
from traintrain.errors import UserError

# Field groups that several modes claim (see TrainingMode.fields).
FRAME_FIELDS = (  # every mode that trains on images fits them to frames
    "image_buckets_step", "image_min_length", "image_max_ratio", "image_mirroring",
    "image_use_transparent_background_ajust",
)
IMAGE_FOLDER_FIELDS = ("lora_data_directory", "lora_trigger_word", "image_use_filename_as_tag")
IMAGE_PAIR_FIELDS = ("original_image", "target_image", "diff_revert_original_target", "diff_use_fixed_noise")


def check_image_folder(config) -> None:
    """The folder is given, exists and holds images (an empty one fails now, not after loading the model)."""
    folder = config.lora_data_directory
    if not folder:
        raise UserError(f"{config.mode} mode needs a folder of images", "choose the image folder",
                        field="lora_data_directory")
    if not Path(folder).is_dir():
        raise UserError(
            f"image folder {folder} does not exist", "choose an existing folder", field="lora_data_directory"
        )
    find_images(folder)


def check_folder_images_decode(config) -> None:
    """Captions decode and at least one image does (the rest are skipped with a warning later)."""
    paths = find_images(config.lora_data_directory)
    for path in paths:
        read_caption(path)
    first_error = None
    for path in paths:
        try:
            load_image(path)
            return
        except BadImage as error:
            first_error = first_error or error
    raise UserError(
        f"no usable image in {config.lora_data_directory}: none of its {len(paths)} image files "
        f"can be read ({first_error})",
        "add readable images",
        field="lora_data_directory",
    )


def check_image_pair(config) -> None:
    for name in ("original_image", "target_image"):
        value = getattr(config, name)
        if not value or not Path(value).is_file():
            raise UserError(
                f"{config.mode} needs {name}: '{value}' is not an image file", "choose an image file", field=name
            )


def check_image_pair_decodes(config) -> None:
    original, target = load_image(config.original_image), load_image(config.target_image)
    if original.image.size != target.image.size:
        (w1, h1), (w2, h2) = original.image.size, target.image.size
        raise UserError(
            f"original image {config.original_image} is {w1}x{h1} but target image {config.target_image} is {w2}x{h2}",
            "both must have the same size",
            field="target_image",
        )
