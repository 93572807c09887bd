"""The embedded coloured-shapes set for GANs: deterministic, step-indexed, split over processes."""

import hashlib

import numpy as np

from noise_research.data.shapes import (
    FACTOR_CLASSES,
    PALETTE,
    ShapeBatches,
    shape_factors,
    shape_image,
)


def test_an_image_is_a_pure_function_of_seed_and_index_with_palette_colours():
    image = shape_image(0, 5, (32, 32))
    assert image.shape == (32, 32, 3) and image.dtype == np.float32
    np.testing.assert_array_equal(image, shape_image(0, 5, (32, 32)))
    assert not np.array_equal(image, shape_image(0, 6, (32, 32)))
    assert not np.array_equal(image, shape_image(1, 5, (32, 32)))
    assert image.min() >= -1.0 and image.max() <= 1.0
    # Shapes are flat palette colours: the most common colour of the image is one of them or a
    # shaded background, and at least one palette colour appears exactly.
    colours = (image.reshape(-1, 3) + 1.0) / 2.0
    exact = [np.any(np.all(np.isclose(colours, c, atol=1e-6), axis=1)) for c in PALETTE]
    assert any(exact)


def test_processes_split_the_global_batch_by_position():
    whole = ShapeBatches(8, (16, 16), seed=3).batch(2)
    halves = [ShapeBatches(8, (16, 16), 3, index, 2).batch(2) for index in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), whole["image"])
    np.testing.assert_array_equal(whole["position"], np.arange(16, 24))


# sha256 (first 16 hex digits) of shape_image(seed, index, size).tobytes(), computed with the
# implementation before the factors were exposed: the refactor must not change a single bit.
IMAGE_CHECKSUMS = {
    (0, 0, (32, 32)): "f4115f5c6ff525d1",
    (0, 5, (32, 32)): "32384eedb526d62d",
    (3, 17, (16, 24)): "e2b5093dc376bb08",
    (7, 123456, (64, 64)): "4325e02de3d06cfe",
    (2**32 - 1, 9, (8, 8)): "bb0c36f40f41c689",
}


def test_images_are_bit_identical_to_the_original_implementation():
    for (seed, index, size), checksum in IMAGE_CHECKSUMS.items():
        digest = hashlib.sha256(shape_image(seed, index, size).tobytes()).hexdigest()
        assert digest[:16] == checksum, (seed, index, size)


def test_factor_batches_carry_each_rows_factors_and_the_same_images():
    plain = ShapeBatches(8, (16, 16), seed=3).batch(2)
    assert set(plain) == {"image", "position"}
    with_factors = ShapeBatches(8, (16, 16), seed=3, factors=True).batch(2)
    np.testing.assert_array_equal(with_factors["image"], plain["image"])
    np.testing.assert_array_equal(with_factors["position"], plain["position"])
    factors = with_factors["factors"]
    assert factors.shape == (8, len(FACTOR_CLASSES)) and factors.dtype == np.int32
    np.testing.assert_array_equal(factors, np.stack([shape_factors(3, p) for p in range(16, 24)]))
    halves = [ShapeBatches(8, (16, 16), 3, index, 2, factors=True).batch(2) for index in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["factors"] for h in halves]), factors)
