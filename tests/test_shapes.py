"""The embedded coloured-shapes set for GANs: deterministic, step-indexed, split over processes."""

import numpy as np

from noise_research.data.shapes import PALETTE, ShapeBatches, shape_image


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
