"""The bucket plan as text and JSON: shown by `traintrain buckets` (a dry run) and at training start.

Both faces print the same lines, so what a dry run promises is what training does.
"""

from __future__ import annotations

from traintrain.data.buckets import BucketAssignment, BucketPlan, Frame
from traintrain.data.dataset import assign_images, bucket_plan, read_images
from traintrain.training.events import Reporter


def _frame(frame: Frame) -> str:
    return f"{frame[0]}x{frame[1]}"


def _frames(frames: list[Frame]) -> str:
    return ", ".join(_frame(f) for f in frames) or "none"


def plan_lines(plan: BucketPlan, assignment: BucketAssignment | None = None, per_image: bool = True) -> list[str]:
    """Frames, then (with images) each image's frames when `per_image`, then the sample counts."""
    lines = [
        f"max frames (width x height): {_frames(plan.frames)}",
        f"sub frames (width x height): {_frames(plan.sub_frames)}",
    ]
    if assignment is None:
        return lines
    if per_image:
        lines.append("images:")
        for name, frames in assignment.frames_by_image.items():
            size = _frame(assignment.sizes_by_image[name])
            lines.append(f"  {name} ({size}): {_frames(frames) if frames else 'not used (smaller than its frames)'}")
    used = len(assignment.used_images)
    copies = f", x{assignment.copies} for mirroring and repeats" if assignment.copies > 1 else ""
    lines.append(f"training samples: {assignment.total_samples} ({used} image{'s' * (used != 1)}{copies})")
    lines.append("per frame: " + ", ".join(f"{_frame(f)}: {n}" for f, n in assignment.samples_by_frame.items()))
    return lines


def plan_json(plan: BucketPlan, assignment: BucketAssignment | None = None) -> dict:
    """{"frames", "sub_frames", "images": {relative path: frames}, "samples"}; frames as [w, h]."""
    return {
        "frames": [list(f) for f in plan.frames],
        "sub_frames": [list(f) for f in plan.sub_frames],
        "images": {} if assignment is None else {
            name: [list(f) for f in frames] for name, frames in assignment.frames_by_image.items()
        },
        "samples": 0 if assignment is None else assignment.total_samples,
    }


def dry_run(config, report: Reporter) -> tuple[BucketPlan, BucketAssignment | None]:
    """The plan training would use, and with `lora_data_directory` set, where each image goes.

    Images and captions are read exactly as training reads them, so bad files are reported (and
    a bad caption or an unusable folder fails) here already; nothing is encoded.
    """
    plan = bucket_plan(config)
    if not config.lora_data_directory:
        return plan, None
    records, _ = read_images(
        config.lora_data_directory, config.lora_trigger_word, report, use_filename=config.image_use_filename_as_tag
    )
    return plan, assign_images(config, plan, records, report)
