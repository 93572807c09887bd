"""Tests for the classical halftoning references (noise_research/classical/dithering.py)."""

import numpy as np
import pytest

from noise_research.classical import (
    CLASSICAL_HALFTONERS,
    OSTROMOUKHOV_COEFFICIENTS,
    bayer_matrix,
    floyd_steinberg,
    ordered_dither,
    ostromoukhov,
)


def _reference_error_diffusion(gray, serpentine, weights_of_level):
    """Pixel-by-pixel error diffusion, written the obvious way (float32, like the module).

    weights_of_level(level) gives (ahead, down_behind, down, down_ahead) for an input level
    0..255; errors leaving the image are dropped; value > 0 becomes white.
    """
    height, width = gray.shape
    corrected = gray.astype(np.float32)
    halftone = np.zeros_like(corrected)
    for row in range(height):
        step = -1 if serpentine and row % 2 == 1 else 1
        columns = range(width - 1, -1, -1) if step == -1 else range(width)
        for column in columns:
            value = corrected[row, column]
            halftone[row, column] = 1.0 if value > 0 else -1.0
            error = np.float32(value - halftone[row, column])
            level = int(np.clip(np.rint((gray[row, column] + 1.0) * 127.5), 0, 255))
            ahead, down_behind, down, down_ahead = weights_of_level(level)
            for d_row, d_column, weight in (
                (0, step, ahead),
                (1, -step, down_behind),
                (1, 0, down),
                (1, step, down_ahead),
            ):
                target_row, target_column = row + d_row, column + d_column
                if target_row < height and 0 <= target_column < width:
                    corrected[target_row, target_column] += np.float32(error * np.float32(weight))
    return halftone


def _floyd_steinberg_weights(level):
    del level
    return 7 / 16, 3 / 16, 5 / 16, 1 / 16


def _ostromoukhov_weights(level):
    right, down_left, down, total = OSTROMOUKHOV_COEFFICIENTS[level]
    return right / total, down_left / total, down / total, 0.0


@pytest.mark.parametrize("serpentine", [False, True])
def test_floyd_steinberg_matches_pixel_loop_reference(serpentine):
    rng = np.random.default_rng(0)
    gray = rng.uniform(-1.0, 1.0, size=(3, 12, 17, 1)).astype(np.float32)
    halftone = floyd_steinberg(gray, serpentine=serpentine)
    for image, result in zip(gray[..., 0], halftone[..., 0], strict=True):
        np.testing.assert_array_equal(
            result, _reference_error_diffusion(image, serpentine, _floyd_steinberg_weights)
        )


def test_serpentine_changes_the_result():
    gray = np.random.default_rng(1).uniform(-1.0, 1.0, size=(16, 16)).astype(np.float32)
    assert not np.array_equal(floyd_steinberg(gray), floyd_steinberg(gray, serpentine=True))


def test_ostromoukhov_matches_pixel_loop_reference():
    rng = np.random.default_rng(2)
    gray = rng.uniform(-1.0, 1.0, size=(2, 11, 14, 1)).astype(np.float32)
    halftone = ostromoukhov(gray)
    for image, result in zip(gray[..., 0], halftone[..., 0], strict=True):
        np.testing.assert_array_equal(
            result, _reference_error_diffusion(image, True, _ostromoukhov_weights)
        )


def test_ostromoukhov_table_is_the_symmetric_256_level_table():
    assert OSTROMOUKHOV_COEFFICIENTS.shape == (256, 4)
    right, down_left, down, total = OSTROMOUKHOV_COEFFICIENTS.T
    np.testing.assert_array_equal(right + down_left + down, total)
    np.testing.assert_array_equal(OSTROMOUKHOV_COEFFICIENTS, OSTROMOUKHOV_COEFFICIENTS[::-1])
    # Spot values of the published table (levels 0, 22, 64, 127).
    np.testing.assert_array_equal(OSTROMOUKHOV_COEFFICIENTS[0], [13, 0, 5, 18])
    np.testing.assert_array_equal(OSTROMOUKHOV_COEFFICIENTS[22], [3, 2, 1, 6])
    np.testing.assert_array_equal(OSTROMOUKHOV_COEFFICIENTS[64], [1, 1, 0, 2])
    np.testing.assert_array_equal(OSTROMOUKHOV_COEFFICIENTS[127], [4, 1, 1, 6])


@pytest.mark.parametrize("name", sorted(CLASSICAL_HALFTONERS))
@pytest.mark.parametrize("shape", [(24, 20), (24, 20, 1), (2, 24, 20, 1)])
def test_halftoners_keep_shape_and_are_binary(name, shape):
    gray = np.random.default_rng(3).uniform(-1.0, 1.0, size=shape).astype(np.float32)
    halftone = CLASSICAL_HALFTONERS[name](gray)
    assert halftone.shape == shape
    assert halftone.dtype == np.float32
    assert set(np.unique(halftone)) <= {-1.0, 1.0}


@pytest.mark.parametrize("name", sorted(CLASSICAL_HALFTONERS))
@pytest.mark.parametrize("tone", [-0.8, -0.3, 0.25, 0.7])
def test_halftoners_preserve_constant_tone(name, tone):
    gray = np.full((64, 64), tone, dtype=np.float32)
    assert abs(CLASSICAL_HALFTONERS[name](gray).mean() - tone) < 0.03


def test_extreme_tones_give_solid_black_and_white():
    for halftoner in CLASSICAL_HALFTONERS.values():
        assert np.all(halftoner(np.full((8, 8), -1.0, np.float32)) == -1.0)
        assert np.all(halftoner(np.full((8, 8), 1.0, np.float32)) == 1.0)


def test_bayer_matrix_is_the_classic_recursive_matrix():
    np.testing.assert_array_equal(
        bayer_matrix(4), [[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]]
    )
    for size in (1, 2, 8, 16):
        np.testing.assert_array_equal(np.sort(bayer_matrix(size).ravel()), np.arange(size**2))


def test_ordered_dither_whitens_the_expected_count_per_tile():
    # Tone t in [0, 1] -> cells whose threshold (rank + 0.5) / 64 lies below t.
    for white_cells in (0, 1, 13, 32, 63, 64):
        tone01 = white_cells / 64
        gray = np.full((16, 24, 1), 2 * tone01 - 1, dtype=np.float32)
        halftone = ordered_dither(gray, matrix_size=8)
        tile = halftone[:8, :8, 0]
        assert (tile == 1.0).sum() == white_cells
        np.testing.assert_array_equal(halftone[:, :, 0], np.tile(tile, (2, 3)))


def test_floyd_steinberg_keeps_the_tone_of_a_megapixel_image():
    """Every pixel's error is passed on in full (7 + 3 + 5 + 1 = 16 sixteenths), so
    sum(halftone − gray) is minus the error pushed out of the image, at most about one pixel's
    error (|e| ≤ 1) per border pixel: |mean(halftone) − mean(gray)| ≤ (H + W) / (H W). The tones
    are not symmetric about 0 (mean −0.3), so plain thresholding is far off (by 0.13)."""
    # Its speed (about 10 ms for 1024² on a CPU) is measured by `python -m noise_research.bench
    # halftone`, not here.
    side = 1024
    gray = np.random.default_rng(4).uniform(-1.0, 0.4, size=(side, side)).astype(np.float32)
    halftone = floyd_steinberg(gray)
    assert abs(float(halftone.mean()) - float(gray.mean())) < 2 * side / side**2


@pytest.mark.parametrize(
    ("gray", "message"),
    [
        (np.zeros((2, 8, 8, 3), np.float32), "shape"),
        (np.zeros((8,), np.float32), "shape"),
        (np.full((8, 8), 1.5, np.float32), r"\[-1, 1\]"),
        (np.full((8, 8), np.nan, np.float32), r"\[-1, 1\]"),
    ],
)
def test_bad_gray_raises(gray, message):
    with pytest.raises(ValueError, match=message):
        floyd_steinberg(gray)


@pytest.mark.parametrize("matrix_size", [0, 1, 6, 2.0])
def test_bad_matrix_size_raises(matrix_size):
    with pytest.raises(ValueError, match="matrix_size"):
        ordered_dither(np.zeros((8, 8), np.float32), matrix_size=matrix_size)
