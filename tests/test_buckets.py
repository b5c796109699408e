import pytest

from traintrain.data.buckets import BucketPlan, assign_frames, max_frames, sub_frames
from traintrain.errors import UserError

# The seed text's example: image size 768,512, buckets step 128, min length 256, max ratio 2.
SEED = ((768, 512), 128, 256, 2.0)
SEED_FRAMES = [(384, 768), (512, 768), (512, 640), (512, 512), (640, 512), (768, 512), (768, 384)]
SEED_SUB_FRAMES = [
    (256, 512), (384, 640), (256, 384), (384, 512), (384, 384),
    (256, 256), (512, 384), (384, 256), (640, 384), (512, 256),
]  # fmt: skip


def test_seed_max_frames():
    assert max_frames(*SEED) == SEED_FRAMES


def test_seed_sub_frames():
    assert sub_frames(*SEED) == SEED_SUB_FRAMES


def test_frames_do_not_depend_on_size_order():
    assert max_frames((512, 768), 128, 256, 2.0) == SEED_FRAMES
    assert sub_frames((512, 768), 128, 256, 2.0) == SEED_SUB_FRAMES


def test_frames_respect_pixel_budget_and_ratio():
    for frame in max_frames(*SEED) + sub_frames(*SEED):
        assert frame[0] * frame[1] <= 768 * 512
        assert 0.5 <= frame[0] / frame[1] <= 2


def test_default_min_length_gives_the_three_basic_shapes_and_their_neighbours():
    """Min length 512 (the original's default) leaves out the 1:2 and 2:1 frames."""
    assert max_frames((768, 512), 128, 512, 2.0) == [(512, 768), (512, 640), (512, 512), (640, 512), (768, 512)]


def test_square_size_with_large_step_has_only_the_square():
    assert max_frames((512, 512), 256, 512, 2.0) == [(512, 512)]
    assert sub_frames((512, 512), 256, 512, 2.0) == []


@pytest.mark.parametrize(
    "args, setting",
    [((0, 256, 2.0), "image_buckets_step"), ((128, 0, 2.0), "image_min_length"), ((128, 256, 0.5), "image_max_ratio")],
)
def test_bad_grid_settings_are_user_errors(args, setting):
    with pytest.raises(UserError, match=setting):
        max_frames((768, 512), *args)
    with pytest.raises(UserError, match=setting):
        sub_frames((768, 512), *args)


def test_seed_sub_image_example():
    """A 3:4 image lands in (512, 640) and, with sub image num 3, in the seed's three sub frames."""
    frames = assign_frames(480, 640, SEED_FRAMES, SEED_SUB_FRAMES, 3)
    assert frames == [(512, 640), (384, 512), (256, 384), (384, 640)]


def test_seed_mirroring_makes_eight_samples():
    assignment = BucketPlan.build(*SEED).plan({"a.png": (480, 640)}, sub_image_num=3, mirroring=True)
    assert assignment.total_samples == 8
    assert assignment.samples_by_frame == {(512, 640): 2, (384, 640): 2, (256, 384): 2, (384, 512): 2}


@pytest.mark.parametrize(
    "size, frame",
    [((1000, 1000), (512, 512)), ((2000, 1000), (768, 384)), ((1000, 3000), (384, 768)), ((1200, 800), (768, 512))],
)
def test_main_frame_is_nearest_ratio(size, frame):
    assert assign_frames(*size, SEED_FRAMES, SEED_SUB_FRAMES, 0) == [frame]


def test_ratio_distance_is_symmetric_in_log_space():
    """1:1 is as far from 2:1 as from 1:2, so the tie goes to the larger frame, not to list order."""
    frames = [(256, 512), (768, 384)]
    assert assign_frames(100, 100, frames, [], 0) == [(768, 384)]
    assert assign_frames(100, 100, frames[::-1], [], 0) == [(768, 384)]


def test_equal_ratio_ties_prefer_the_larger_frame():
    assert assign_frames(300, 300, SEED_FRAMES, SEED_SUB_FRAMES, 2)[1:] == [(384, 384), (256, 256)]


def test_sub_image_num_larger_than_available_takes_all():
    frames = assign_frames(480, 640, SEED_FRAMES, SEED_SUB_FRAMES, 50)
    assert sorted(frames[1:]) == sorted(SEED_SUB_FRAMES)


def test_plan_counts_every_image():
    plan = BucketPlan.build(*SEED)
    assignment = plan.plan({"wide.png": (1200, 800), "square.png": (64, 64), "tall.png": (600, 800)}, 1, False)
    assert assignment.frames_by_image["wide.png"][0] == (768, 512)
    assert assignment.frames_by_image["square.png"][0] == (512, 512)
    assert all(len(frames) == 2 for frames in assignment.frames_by_image.values())
    assert assignment.total_samples == 6 == sum(assignment.samples_by_frame.values())
