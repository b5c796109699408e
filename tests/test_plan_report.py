"""`traintrain buckets`: the dry-run plan as text and JSON, and the same lines at training start."""

import json

from PIL import Image

from traintrain.cli import main
from traintrain.config import TrainConfig
from traintrain.data.plan_report import dry_run, plan_json, plan_lines
from traintrain.training.events import Message

SEED_ARGS = ["buckets", "--image-size", "768,512", "--step", "128", "--min-length", "256", "--max-ratio", "2"]
SEED_FRAMES = "384x768, 512x768, 512x640, 512x512, 640x512, 768x512, 768x384"
SEED_SUB_FRAMES = "256x512, 384x640, 256x384, 384x512, 384x384, 256x256, 512x384, 384x256, 640x384, 512x256"


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_image(path, size, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)
    return path


def test_seed_example_text(capsys):
    code, out, err = run_cli(capsys, *SEED_ARGS)
    assert code == 0 and err == ""
    assert out.splitlines() == [
        f"max frames (width x height): {SEED_FRAMES}",
        f"sub frames (width x height): {SEED_SUB_FRAMES}",
    ]


def test_seed_example_json(capsys):
    code, out, _ = run_cli(capsys, *SEED_ARGS, "--json")
    data = json.loads(out)
    assert code == 0 and set(data) == {"frames", "sub_frames", "images", "samples"}
    assert len(data["frames"]) == 7 and len(data["sub_frames"]) == 10
    assert data["frames"][0] == [384, 768] and data["sub_frames"][-1] == [512, 256]
    assert data["images"] == {} and data["samples"] == 0


def test_seed_sub_image_and_mirroring_example_with_data(capsys, tmp_path):
    """The seed's 3:4 image: frame 512x640 plus three sub frames, mirrored: 8 samples."""
    write_image(tmp_path / "sub" / "a.png", (480, 640))
    code, out, _ = run_cli(capsys, *SEED_ARGS, "--sub-image-num", "3", "--mirroring", "--data", str(tmp_path), "--json")
    data = json.loads(out)
    assert code == 0
    assert data["images"] == {"sub/a.png": [[512, 640], [384, 512], [256, 384], [384, 640]]}
    assert data["samples"] == 8


def test_text_with_data_lists_every_image_and_counts(capsys, tmp_path):
    write_image(tmp_path / "tall.png", (480, 640))
    write_image(tmp_path / "wide.JPG", (1200, 800))
    code, out, _ = run_cli(capsys, *SEED_ARGS, "--mirroring", "--data", str(tmp_path))
    assert code == 0
    assert out.splitlines()[2:] == [
        "images:",
        "  tall.png (480x640): 512x640",
        "  wide.JPG (1200x800): 768x512",
        "training samples: 4 (2 images, x2 for mirroring and repeats)",
        "per frame: 512x640: 2, 768x512: 2",
    ]


def test_image_size_order_is_kept_for_a_non_square_size(capsys):
    _, out, _ = run_cli(capsys, "buckets", "--image-size", "64,128", "--step", "64", "--min-length", "64", "--json")
    assert json.loads(out)["frames"] == [[64, 128], [64, 64], [128, 64]]


def test_num_multiply_and_disable_upscale(capsys, tmp_path):
    write_image(tmp_path / "small.png", (300, 400))
    write_image(tmp_path / "big.png", (1200, 800))
    code, out, err = run_cli(
        capsys, *SEED_ARGS, "--num-multiply", "3", "--disable-upscale", "--data", str(tmp_path), "--json"
    )
    data = json.loads(out)
    assert code == 0
    assert data["images"] == {"big.png": [[768, 512]], "small.png": []}
    assert data["samples"] == 3
    assert "small.png (300x400) is smaller than its frames" in err


def test_bad_images_are_warnings_on_stderr_and_json_stays_clean(capsys, tmp_path):
    write_image(tmp_path / "good.png", (512, 512))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    code, out, err = run_cli(capsys, *SEED_ARGS, "--data", str(tmp_path), "--json")
    assert code == 0 and json.loads(out)["images"] == {"good.png": [[512, 512]]}
    assert "Traceback" not in err
    assert str(tmp_path / "empty.png") in err and str(tmp_path / "notes.jpg") in err


def test_user_errors_are_one_line(capsys, tmp_path):
    for args, fragment in [
        (["--step", "abc"], "image_buckets_step: 'abc' is not a number"),
        (["--image-size", "768,500"], "image_size"),
        (["--data", str(tmp_path)], "no images in"),
        (["--num-multiply", "0"], "image_num_multiply: 0 is below the minimum 1"),
    ]:
        code, _, err = run_cli(capsys, "buckets", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err


def test_config_file_supplies_the_settings(capsys, tmp_path):
    config = TrainConfig(image_size=[768, 512], image_buckets_step=128, image_min_length=256)
    config.save_json(tmp_path / "settings.json")
    _, out, _ = run_cli(capsys, "buckets", "--config", str(tmp_path / "settings.json"), "--json")
    assert len(json.loads(out)["sub_frames"]) == 10


def test_training_summary_leaves_out_the_per_image_lines(tmp_path):
    write_image(tmp_path / "a.png", (480, 640))
    config = TrainConfig(lora_data_directory=str(tmp_path), image_size=[768, 512], image_buckets_step=128,
                         image_min_length=256)
    events = []
    plan, assignment = dry_run(config, events.append)
    summary = plan_lines(plan, assignment, per_image=False)
    full = plan_lines(plan, assignment)
    assert "images:" not in summary and "  a.png (480x640): 512x640" in full
    assert summary == [line for line in full if line != "images:" and not line.startswith("  ")]
    assert plan_json(plan, assignment)["images"] == {"a.png": [[512, 640]]}
    assert not [e for e in events if isinstance(e, Message)]
