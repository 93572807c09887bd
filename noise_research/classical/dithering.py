"""Classical halftoning references: Floyd–Steinberg, ordered (Bayer) dithering, Ostromoukhov.

These are the baselines the learned halftoners are compared with (DESIGN.md, "NIB / halftoning":
"The classical references are error diffusion (Floyd–Steinberg; Ostromoukhov 2001 variable
coefficients) and ordered/blue-noise-mask dithering").

Project convention: a gray image is float32 in [-1, 1] (-1 black, +1 white) and a halftone is in
{-1, +1}. Every function accepts a single image of shape (H, W) or (H, W, 1), or a batch of shape
(B, H, W, 1), and returns a float32 halftone of the same shape. They run on the host (numpy in,
numpy out); the error diffusion itself is a jitted `jax.lax.scan` (rows) over a `jax.lax.scan`
(columns), vectorised over the batch, which halftones a 1024×1024 image in well under a second on
one CPU core.

Thresholding convention shared by all methods: a pixel whose (error-corrected) value is strictly
above the threshold becomes white (+1); a tie goes to black (-1), as in Ostromoukhov's reference
program (`corrected_level <= 127.5` puts black).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Error-diffusion weights are given in scan coordinates, in this order:
# (ahead: next pixel of the same row in scan direction, down_behind, down, down_ahead).
FLOYD_STEINBERG_WEIGHTS = np.array([7.0, 3.0, 5.0, 1.0], dtype=np.float32) / 16.0

# Ostromoukhov, "A Simple and Efficient Error-Diffusion Algorithm", SIGGRAPH 2001, pp. 567-572:
# variable error-diffusion coefficients indexed by the input gray level 0..255 (0 black), one row
# per level: (right, down-left, down, sum), the weights being right/sum, down-left/sum and
# down/sum, with "right" and "left" taken along the serpentine scan direction. The numbers are the
# published data from the author's reference program varcoeffED.c (version 1, August 2001, table
# `var_coefs_tab`); the table is symmetric (level i equals level 255 - i), so levels 0..127 are
# entered and 128..255 mirrored. Note: a second variant of this table circulates in third-party
# code (e.g. libcaca), which differs at levels 23..71; the author's program is used here.
_OSTROMOUKHOV_COEFFICIENTS_0_TO_127 = (
    (13, 0, 5, 18),  # 0
    (13, 0, 5, 18),
    (21, 0, 10, 31),
    (7, 0, 4, 11),
    (8, 0, 5, 13),
    (47, 3, 28, 78),  # 5
    (23, 3, 13, 39),
    (15, 3, 8, 26),
    (22, 6, 11, 39),
    (43, 15, 20, 78),
    (7, 3, 3, 13),  # 10
    (501, 224, 211, 936),
    (249, 116, 103, 468),
    (165, 80, 67, 312),
    (123, 62, 49, 234),
    (489, 256, 191, 936),  # 15
    (81, 44, 31, 156),
    (483, 272, 181, 936),
    (60, 35, 22, 117),
    (53, 32, 19, 104),
    (237, 148, 83, 468),  # 20
    (471, 304, 161, 936),
    (3, 2, 1, 6),
    (459, 304, 161, 924),
    (38, 25, 14, 77),
    (453, 296, 175, 924),  # 25
    (225, 146, 91, 462),
    (149, 96, 63, 308),
    (111, 71, 49, 231),
    (63, 40, 29, 132),
    (73, 46, 35, 154),  # 30
    (435, 272, 217, 924),
    (108, 67, 56, 231),
    (13, 8, 7, 28),
    (213, 130, 119, 462),
    (423, 256, 245, 924),  # 35
    (5, 3, 3, 11),
    (281, 173, 162, 616),
    (141, 89, 78, 308),
    (283, 183, 150, 616),
    (71, 47, 36, 154),  # 40
    (285, 193, 138, 616),
    (13, 9, 6, 28),
    (41, 29, 18, 88),
    (36, 26, 15, 77),
    (289, 213, 114, 616),  # 45
    (145, 109, 54, 308),
    (291, 223, 102, 616),
    (73, 57, 24, 154),
    (293, 233, 90, 616),
    (21, 17, 6, 44),  # 50
    (295, 243, 78, 616),
    (37, 31, 9, 77),
    (27, 23, 6, 56),
    (149, 129, 30, 308),
    (299, 263, 54, 616),  # 55
    (75, 67, 12, 154),
    (43, 39, 6, 88),
    (151, 139, 18, 308),
    (303, 283, 30, 616),
    (38, 36, 3, 77),  # 60
    (305, 293, 18, 616),
    (153, 149, 6, 308),
    (307, 303, 6, 616),
    (1, 1, 0, 2),
    (101, 105, 2, 208),  # 65
    (49, 53, 2, 104),
    (95, 107, 6, 208),
    (23, 27, 2, 52),
    (89, 109, 10, 208),
    (43, 55, 6, 104),  # 70
    (83, 111, 14, 208),
    (5, 7, 1, 13),
    (172, 181, 37, 390),
    (97, 76, 22, 195),
    (72, 41, 17, 130),  # 75
    (119, 47, 29, 195),
    (4, 1, 1, 6),
    (4, 1, 1, 6),
    (4, 1, 1, 6),
    (4, 1, 1, 6),  # 80
    (4, 1, 1, 6),
    (4, 1, 1, 6),
    (4, 1, 1, 6),
    (4, 1, 1, 6),
    (4, 1, 1, 6),  # 85
    (65, 18, 17, 100),
    (95, 29, 26, 150),
    (185, 62, 53, 300),
    (30, 11, 9, 50),
    (35, 14, 11, 60),  # 90
    (85, 37, 28, 150),
    (55, 26, 19, 100),
    (80, 41, 29, 150),
    (155, 86, 59, 300),
    (5, 3, 2, 10),  # 95
    (5, 3, 2, 10),
    (5, 3, 2, 10),
    (5, 3, 2, 10),
    (5, 3, 2, 10),
    (5, 3, 2, 10),  # 100
    (5, 3, 2, 10),
    (5, 3, 2, 10),
    (5, 3, 2, 10),
    (5, 3, 2, 10),
    (5, 3, 2, 10),  # 105
    (5, 3, 2, 10),
    (5, 3, 2, 10),
    (305, 176, 119, 600),
    (155, 86, 59, 300),
    (105, 56, 39, 200),  # 110
    (80, 41, 29, 150),
    (65, 32, 23, 120),
    (55, 26, 19, 100),
    (335, 152, 113, 600),
    (85, 37, 28, 150),  # 115
    (115, 48, 37, 200),
    (35, 14, 11, 60),
    (355, 136, 109, 600),
    (30, 11, 9, 50),
    (365, 128, 107, 600),  # 120
    (185, 62, 53, 300),
    (25, 8, 7, 40),
    (95, 29, 26, 150),
    (385, 112, 103, 600),
    (65, 18, 17, 100),  # 125
    (395, 104, 101, 600),
    (4, 1, 1, 6),  # 127
)

# (256, 4) integer table: (right, down-left, down, sum) for every input level 0..255.
OSTROMOUKHOV_COEFFICIENTS = np.concatenate(
    [
        np.array(_OSTROMOUKHOV_COEFFICIENTS_0_TO_127, dtype=np.int64),
        np.array(_OSTROMOUKHOV_COEFFICIENTS_0_TO_127[::-1], dtype=np.int64),
    ]
)


def _ostromoukhov_weight_table() -> np.ndarray:
    """(256, 4) float32 diffusion weights (ahead, down_behind, down, down_ahead) per input level."""
    right, down_left, down, total = OSTROMOUKHOV_COEFFICIENTS.T
    weights = np.stack([right, down_left, down, np.zeros_like(right)], axis=-1) / total[:, None]
    return weights.astype(np.float32)


_OSTROMOUKHOV_WEIGHTS = _ostromoukhov_weight_table()


def _as_gray_batch(gray: np.ndarray) -> np.ndarray:
    """Validates gray of shape (H, W), (H, W, 1) or (B, H, W, 1); returns (B, H, W) float32."""
    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim == 2:
        batch = gray[None]
    elif gray.ndim == 3 and gray.shape[-1] == 1:
        batch = gray[None, ..., 0]
    elif gray.ndim == 4 and gray.shape[-1] == 1:
        batch = gray[..., 0]
    else:
        raise ValueError(
            f"gray must have shape (H, W), (H, W, 1) or (B, H, W, 1); got shape {gray.shape}."
        )
    if batch.size == 0:
        raise ValueError(f"gray must not be empty; got shape {gray.shape}.")
    if not np.all(np.isfinite(batch)):
        raise ValueError("gray values must be finite and in [-1, 1]; got NaN or inf values.")
    if batch.min() < -1.0 or batch.max() > 1.0:
        raise ValueError(
            f"gray values must be in [-1, 1]; got min {batch.min()}, max {batch.max()}."
        )
    return batch


@functools.partial(jax.jit, static_argnames=("serpentine",))
def _diffuse_errors(gray: jax.Array, weights: jax.Array, *, serpentine: bool) -> jax.Array:
    """Error diffusion with a 4-neighbour stencil whose weights may vary per pixel.

    Args:
      gray: (B, H, W) values in [-1, 1].
      weights: (4,) or (B, H, W, 4) weights (ahead, down_behind, down, down_ahead) of the error of
        each pixel, in scan coordinates (ahead = the next pixel of the row in scan direction).
      serpentine: scan odd rows right to left (even rows always go left to right).

    Returns:
      (B, H, W) halftone in {-1, +1}. Errors that would leave the image are dropped.

    Each row is one step of an outer `lax.scan`; within a row the only sequential dependency is
    the error passed "ahead", a `lax.scan` over columns carrying one value per image. The errors
    pushed to the next row are then distributed with vectorised shifts.
    """
    batch, height, width = gray.shape
    weights = jnp.broadcast_to(weights, (*gray.shape, 4))
    row_is_reversed = (jnp.arange(height) % 2 == 1) & serpentine

    def diffuse_row(
        error_from_row_above: jax.Array, row: tuple[jax.Array, ...]
    ) -> tuple[jax.Array, jax.Array]:
        gray_row, row_weights, reversed_row = row

        def to_scan_order(values: jax.Array) -> jax.Array:
            # Reversing twice is the identity, so the same map converts back to image order.
            return jnp.where(reversed_row, values[:, ::-1], values)

        corrected = to_scan_order(gray_row + error_from_row_above)
        row_weights = to_scan_order(row_weights)
        ahead, down_behind, down, down_ahead = jnp.moveaxis(row_weights, -1, 0)

        def quantize_pixel(
            error_from_behind: jax.Array, pixel: tuple[jax.Array, jax.Array]
        ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
            value, ahead_weight = pixel
            value = value + error_from_behind
            binary = jnp.where(value > 0.0, 1.0, -1.0).astype(value.dtype)
            error = value - binary
            return error * ahead_weight, (binary, error)

        _, (binary, error) = jax.lax.scan(
            quantize_pixel,
            jnp.zeros((batch,), gray.dtype),
            (corrected.T, ahead.T),
            unroll=4,
        )
        binary, error = binary.T, error.T
        # Column c of the next row receives down_ahead from c-1, down from c, down_behind from c+1.
        from_behind = jnp.pad(error * down_ahead, ((0, 0), (1, 0)))[:, :width]
        from_ahead = jnp.pad(error * down_behind, ((0, 0), (0, 1)))[:, 1:]
        error_to_row_below = from_behind + error * down + from_ahead
        return to_scan_order(error_to_row_below), to_scan_order(binary)

    rows_first = lambda values: jnp.moveaxis(values, 1, 0)
    _, halftone_rows = jax.lax.scan(
        diffuse_row,
        jnp.zeros((batch, width), gray.dtype),
        (rows_first(gray), rows_first(weights), row_is_reversed),
    )
    return jnp.moveaxis(halftone_rows, 0, 1)


def floyd_steinberg(gray: np.ndarray, serpentine: bool = False) -> np.ndarray:
    """Floyd–Steinberg error diffusion (Floyd & Steinberg 1976).

    The quantization error of each pixel goes 7/16 to the next pixel of the row, 3/16 below-behind,
    5/16 below and 1/16 below-ahead; errors leaving the image are dropped.

    Args:
      gray: (H, W), (H, W, 1) or (B, H, W, 1) gray values in [-1, 1].
      serpentine: if True, odd rows are scanned right to left (and the stencil mirrored). Default
        False: the classic raster scan, every row left to right.

    Returns:
      float32 halftone in {-1, +1}, same shape as `gray`.
    """
    batch = _as_gray_batch(gray)
    halftone = _diffuse_errors(batch, FLOYD_STEINBERG_WEIGHTS, serpentine=serpentine)
    return np.asarray(halftone).reshape(np.shape(gray))


def bayer_matrix(size: int) -> np.ndarray:
    """Bayer's (1973) ordered-dither index matrix of side `size` (a power of two).

    Built recursively: M_1 = [[0]], M_2n = [[4 M_n, 4 M_n + 2], [4 M_n + 3, 4 M_n + 1]].

    Returns:
      (size, size) int64 matrix holding each rank 0 .. size² - 1 once.
    """
    if not isinstance(size, int) or size < 1 or size & (size - 1):
        raise ValueError(f"size must be a power of two >= 1; got {size!r}.")
    matrix = np.zeros((1, 1), dtype=np.int64)
    while matrix.shape[0] < size:
        matrix = np.block([[4 * matrix, 4 * matrix + 2], [4 * matrix + 3, 4 * matrix + 1]])
    return matrix


def ordered_dither(gray: np.ndarray, matrix_size: int = 8) -> np.ndarray:
    """Ordered dithering with a tiled Bayer threshold matrix.

    The rank r of the (matrix_size × matrix_size) Bayer matrix becomes the threshold
    (r + 0.5) / matrix_size² on the [0, 1] tone scale, i.e. 2 (r + 0.5) / matrix_size² - 1 in
    [-1, 1]; a pixel is white iff it is above its threshold. A constant tone t in [0, 1] thus
    whitens round(t · matrix_size²) cells of every tile.

    Args:
      gray: (H, W), (H, W, 1) or (B, H, W, 1) gray values in [-1, 1].
      matrix_size: side of the Bayer matrix, a power of two (2, 4, 8, 16, ...).

    Returns:
      float32 halftone in {-1, +1}, same shape as `gray`.
    """
    if not isinstance(matrix_size, int) or matrix_size < 2 or matrix_size & (matrix_size - 1):
        raise ValueError(f"matrix_size must be a power of two >= 2; got {matrix_size!r}.")
    batch = _as_gray_batch(gray)
    _, height, width = batch.shape
    thresholds = 2.0 * (bayer_matrix(matrix_size) + 0.5) / matrix_size**2 - 1.0
    repeats = (-(-height // matrix_size), -(-width // matrix_size))
    thresholds = np.tile(thresholds, repeats)[:height, :width].astype(np.float32)
    halftone = np.where(batch > thresholds, 1.0, -1.0).astype(np.float32)
    return halftone.reshape(np.shape(gray))


def ostromoukhov(gray: np.ndarray) -> np.ndarray:
    """Ostromoukhov (2001) variable-coefficient error diffusion, serpentine scan.

    Each pixel diffuses its error to the next pixel in scan direction, below-behind and below,
    with weights looked up by the pixel's *input* gray level (0..255, i.e.
    round((gray + 1) · 127.5)) in `OSTROMOUKHOV_COEFFICIENTS`, as in the author's reference
    program. Rows alternate direction (even rows left to right). The reference program also
    forces pixels whose input is exactly black to black; that post-processing is not part of the
    algorithm described in the paper and is not applied here.

    Args:
      gray: (H, W), (H, W, 1) or (B, H, W, 1) gray values in [-1, 1].

    Returns:
      float32 halftone in {-1, +1}, same shape as `gray`.
    """
    batch = _as_gray_batch(gray)
    input_levels = np.clip(np.rint((batch + 1.0) * 127.5), 0, 255).astype(np.int64)
    weights = _OSTROMOUKHOV_WEIGHTS[input_levels]
    halftone = _diffuse_errors(batch, weights, serpentine=True)
    return np.asarray(halftone).reshape(np.shape(gray))


CLASSICAL_HALFTONERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "floyd_steinberg": floyd_steinberg,
    "ordered": ordered_dither,
    "ostromoukhov": ostromoukhov,
}
