"""Tests for the batch-source contract, procedural images and scikit-image samples."""

import chex
import numpy as np
import pytest

from noise_research.data import (
    SAMPLE_IMAGE_NAMES,
    BatchSource,
    ComicBatches,
    ProcessSlice,
    comic_image,
    constant_gray_batch,
    gray_ramp,
    gray_steps,
    resize_gray,
    rgb_to_gray,
    sample_images,
)

# ---------------------------------------------------------------- base: process slices, gray


def test_process_slice_positions_follow_the_contract():
    # Step 3, global batch 8, process 1 of 4: positions 3·8 + 1·2 … 3·8 + 2·2 − 1.
    chex.assert_equal(list(ProcessSlice(8, 1, 4).global_positions(3)), [26, 27])
    chex.assert_equal(list(ProcessSlice(8, 0, 1).global_positions(0)), list(range(8)))
    assert ProcessSlice(8, 3, 4).per_process_batch_size == 2


def test_process_slice_defaults_to_this_jax_process():
    process_slice = ProcessSlice(4)
    assert (process_slice.process_index, process_slice.process_count) == (0, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"global_batch_size": 6, "process_index": 0, "process_count": 4}, "does not divide"),
        ({"global_batch_size": 0, "process_index": 0, "process_count": 1}, "global_batch_size"),
        ({"global_batch_size": 4, "process_index": 2, "process_count": 2}, "process_index"),
        ({"global_batch_size": 4, "process_index": 0, "process_count": 0}, "process_count"),
    ],
)
def test_process_slice_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProcessSlice(**kwargs)


def test_process_slice_rejects_negative_step():
    with pytest.raises(ValueError, match="step"):
        ProcessSlice(4, 0, 1).global_positions(-1)


def test_rgb_to_gray_uses_bt601_weights():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    gray = rgb_to_gray(rgb)
    chex.assert_shape(gray, (1, 3, 1))
    np.testing.assert_allclose(gray[0, :, 0], [0.299 * 255, 0.587 * 255, 0.114 * 255], rtol=1e-6)
    chex.assert_shape(rgb_to_gray(np.zeros((2, 5), np.uint8)), (2, 5, 1))
    with pytest.raises(ValueError, match="image"):
        rgb_to_gray(np.zeros((2, 5, 4), np.uint8))


def test_resize_gray_keeps_constant_images_constant():
    resized = resize_gray(np.full((5, 7, 1), 0.25, np.float32), (12, 9))
    chex.assert_shape(resized, (12, 9, 1))
    np.testing.assert_allclose(resized, 0.25, atol=1e-5)


# ---------------------------------------------------------------- comic images


def test_comic_image_shape_dtype_range_and_determinism():
    image = comic_image(seed=7, index=3, size=(24, 40))
    chex.assert_shape(image, (24, 40, 1))
    assert image.dtype == np.float32
    assert image.min() >= -1.0 and image.max() <= 1.0
    np.testing.assert_array_equal(image, comic_image(7, 3, (24, 40)))
    assert not np.array_equal(image, comic_image(7, 4, (24, 40)))
    assert not np.array_equal(image, comic_image(8, 3, (24, 40)))


def test_comic_images_are_flat_shaded_and_span_the_gray_range():
    images = np.stack([comic_image(3, index, (48, 64)) for index in range(16)])
    near_black = (images <= -0.8).mean(axis=(1, 2, 3))
    near_white = (images >= 0.8).mean(axis=(1, 2, 3))
    mid_tone = (np.abs(images) <= 0.25).mean(axis=(1, 2, 3))
    # Outlines and a flat near-black shape: every image has black; most have white and mid-gray.
    assert np.all(near_black > 0.01)
    assert np.mean(near_white > 0.01) >= 0.75
    assert np.mean(mid_tone > 0.01) >= 0.75
    # Large constant regions: the most frequent level covers a sizeable part of every image.
    for image in images:
        _, counts = np.unique(image, return_counts=True)
        assert counts.max() / image.size > 0.05


@pytest.mark.parametrize("size", [(1, 1), (3, 50), (5, 5), (9, 8), (16, 16)])
def test_comic_image_any_size(size):
    # Many indices: tiny canvases give degenerate shapes that Pillow must still draw.
    for index in range(150):
        chex.assert_shape(comic_image(1, index, size), (*size, 1))


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"seed": -1, "index": 0, "size": (8, 8)}, "seed"),
        ({"seed": 0, "index": -2, "size": (8, 8)}, "index"),
        ({"seed": 0, "index": 0, "size": (0, 8)}, "size"),
        ({"seed": 0, "index": 0, "size": (8,)}, "size"),
    ],
)
def test_comic_image_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        comic_image(**kwargs)


def test_comic_batches_is_a_batch_source_of_comic_images():
    source = ComicBatches(
        global_batch_size=4, size=(16, 12), seed=5, process_index=0, process_count=1
    )
    assert isinstance(source, BatchSource)
    batch = source.batch(2)
    assert set(batch) == {"image", "position"}
    chex.assert_shape(batch["image"], (4, 16, 12, 1))
    expected = np.stack([comic_image(5, position, (16, 12)) for position in range(8, 12)])
    np.testing.assert_array_equal(batch["image"], expected)
    np.testing.assert_array_equal(batch["position"], np.arange(8, 12, dtype=np.int32))
    np.testing.assert_array_equal(batch["image"], source.batch(2)["image"])
    assert not np.array_equal(batch["image"], source.batch(3)["image"])


def test_comic_batches_global_batch_is_the_same_for_any_process_count():
    step = 3
    global_batches = []
    for process_count in (1, 2, 4):
        shards = [
            ComicBatches(8, (8, 8), seed=1, process_index=p, process_count=process_count).batch(
                step
            )
            for p in range(process_count)
        ]
        for shard in shards:
            chex.assert_shape(shard["image"], (8 // process_count, 8, 8, 1))
        global_batches.append(np.concatenate([shard["image"] for shard in shards]))
        positions = np.concatenate([shard["position"] for shard in shards])
        np.testing.assert_array_equal(positions, np.arange(step * 8, step * 8 + 8))
    np.testing.assert_array_equal(global_batches[0], global_batches[1])
    np.testing.assert_array_equal(global_batches[0], global_batches[2])


def test_comic_batches_rejects_indivisible_global_batch():
    with pytest.raises(ValueError, match="process_count=4"):
        ComicBatches(6, (8, 8), process_index=0, process_count=4)


# ---------------------------------------------------------------- constant gray, ramp, steps


def test_constant_gray_batch_is_constant_per_image_uniform_and_deterministic():
    batch = constant_gray_batch(seed=2, step=5, global_batch_size=3, size=(4, 6))
    chex.assert_shape(batch, (3, 4, 6, 1))
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch, batch[:, :1, :1, :] * np.ones_like(batch))
    np.testing.assert_array_equal(batch, constant_gray_batch(2, 5, 3, (4, 6)))
    assert not np.array_equal(batch, constant_gray_batch(2, 6, 3, (4, 6)))

    levels = constant_gray_batch(0, 0, 4000, (1, 1)).ravel()
    assert levels.min() >= -1.0 and levels.max() <= 1.0
    # Uniform on [−1, 1]: mean 0, variance 1/3, all deciles filled.
    assert abs(levels.mean()) < 0.05 and abs(levels.var() - 1 / 3) < 0.03
    histogram, _ = np.histogram(levels, bins=10, range=(-1, 1))
    assert histogram.min() > 300


def test_constant_gray_global_batch_is_the_same_for_any_process_count():
    whole = constant_gray_batch(7, 3, 8, (2, 2))
    for process_count in (2, 4):
        shards = [
            constant_gray_batch(7, 3, 8, (2, 2), p, process_count) for p in range(4)[:process_count]
        ]
        chex.assert_shape(shards[0], (8 // process_count, 2, 2, 1))
        np.testing.assert_array_equal(np.concatenate(shards), whole)


def test_constant_gray_batch_rejects_bad_sizes():
    with pytest.raises(ValueError, match="global_batch_size must"):
        constant_gray_batch(0, 0, 0, (4, 4))
    with pytest.raises(ValueError, match="process_count=4"):
        constant_gray_batch(0, 0, 6, (4, 4), 0, 4)


def test_gray_ramp_goes_from_black_to_white_left_to_right():
    ramp = gray_ramp((3, 11))
    chex.assert_shape(ramp, (3, 11, 1))
    np.testing.assert_allclose(ramp[0, :, 0], np.linspace(-1, 1, 11), atol=1e-6)
    np.testing.assert_array_equal(ramp[0], ramp[2])


def test_gray_steps_makes_near_equal_constant_patches():
    steps = gray_steps([-1.0, 0.0, 0.5], (2, 10))
    chex.assert_shape(steps, (2, 10, 1))
    levels, widths = np.unique(steps[0, :, 0], return_counts=True)
    np.testing.assert_array_equal(levels, [-1.0, 0.0, 0.5])
    assert widths.max() - widths.min() <= 1
    np.testing.assert_array_equal(steps[0, :4, 0], -1.0)  # left to right in the given order
    np.testing.assert_array_equal(steps[0, -3:, 0], 0.5)


@pytest.mark.parametrize(
    ("levels", "size", "message"),
    [([], (2, 4), "non-empty"), ([0.0, 1.5], (2, 4), r"\[-1, 1\]"), ([0.0] * 5, (2, 4), "width")],
)
def test_gray_steps_rejects_bad_arguments(levels, size, message):
    with pytest.raises(ValueError, match=message):
        gray_steps(levels, size)


# ---------------------------------------------------------------- scikit-image samples


def test_default_sample_images_are_distinct_gray_photographs_in_range():
    images = sample_images(size=32)
    assert len(images) >= 2
    # The default set is loaded like any named offline set (same names, same pixels).
    named = sample_images(list(images), size=32)
    assert list(named) == list(images) and set(images) <= set(SAMPLE_IMAGE_NAMES)
    for name, image in images.items():
        chex.assert_shape(image, (32, 32, 1))
        assert image.dtype == np.float32
        assert image.min() >= -1.0 and image.max() <= 1.0
        np.testing.assert_array_equal(image, named[name])
        assert image.std() > 0.1, name  # a contrasted picture, not a flat texture or constant
    # No picture twice (skimage's "cat" is "chelsea" under another name).
    flattened = np.stack([image.ravel() for image in images.values()])
    assert len(np.unique(flattened, axis=0)) == len(images)


def test_every_listed_sample_image_loads_offline():
    images = sample_images(SAMPLE_IMAGE_NAMES, size=8)
    assert set(images) == set(SAMPLE_IMAGE_NAMES)


def test_sample_image_is_center_cropped_gray_of_the_original():
    import skimage.data

    rocket = skimage.data.rocket()  # 427 × 640 RGB: the crop keeps the middle 427 columns
    side = rocket.shape[0]
    left = (rocket.shape[1] - side) // 2
    expected = rgb_to_gray(rocket[:, left : left + side]) / 127.5 - 1.0
    np.testing.assert_allclose(sample_images(["rocket"], size=side)["rocket"], expected, atol=1e-3)


def test_sample_images_rejects_unknown_names_and_bad_size():
    with pytest.raises(ValueError, match="not_an_image"):
        sample_images(["camera", "not_an_image"])
    with pytest.raises(ValueError, match="string"):
        sample_images("camera")
    with pytest.raises(ValueError, match="size"):
        sample_images(["camera"], size=0)
