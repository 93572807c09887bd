"""The twelve image distortions of the feature-quantization paper, four strengths each.

Feature-quantization paper, Sec. 3.1 ("A Brief Analysis of Image Distortions"), Table 2 and
Figure 4: classifiers are evaluated on images distorted by signal-processing loss (motion/defocus
blur, JPEG, JPEG 2000, chromatic aberration), statistical noise (salt and pepper, non-Gaussian
random noise, Gaussian noise on luma or on chroma) and occlusion (inpainting, targeted occlusion),
plus a mixture, each at "four sets of hyper-parameters" of increasing strength. The paper gives no
parameter values and no code exists (DESIGN.md, "Feature quantization": every default is ours), so
the four levels below are our choice, documented per distortion in its `*_LEVELS` constant and in
`DISTORTIONS[name].levels`. Pixel-valued levels are meant for ImageNet-sized crops (~224 px).

Convention: classification inputs, RGB float in [0, 1], NHWC (B, H, W, 3). Every distortion is
`(images, strength, key) -> images` with `strength` a Python int in {1, 2, 3, 4} (static under
`jax.jit`), returns the input's shape and dtype with values in [0, 1], is deterministic given `key`,
and is monotone in strength: the random draws do not depend on the strength (the same key gives the
same noise, strokes, directions, pixels), only their amount does, so a stronger level moves further
from the clean image.

Two kinds: "device" distortions are pure jnp and jit-able (usable inside an eval step); "host"
ones (JPEG, JPEG 2000, and the mixture, which contains JPEG) run Pillow's codecs on numpy arrays,
outside jit.

The targeted occlusion also takes the images' labels: it occludes where a reference model's
gradient saliency of the TRUE class is highest (the paper: "obliterate the information important
for recognition of a target class", with "a pre-trained Plain-18" as the reference).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import pathlib
from collections.abc import Callable, Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from noise_research.data.base import RGB_TO_GRAY_WEIGHTS, check_integer

STRENGTHS = (1, 2, 3, 4)

# Strength levels (index strength − 1). The paper gives none of them; all are our choice.
# Motion blur: length in pixels of the straight motion path (random direction per image).
MOTION_BLUR_LENGTHS = (5, 9, 13, 17)
# Defocus blur: radius in pixels of the anti-aliased disk (pillbox) point-spread function.
DEFOCUS_BLUR_RADII = (1.0, 2.0, 3.0, 4.5)
# JPEG: Pillow quality factor (lower = stronger compression).
JPEG_QUALITIES = (30, 15, 8, 4)
# JPEG 2000: target PSNR in dB of the single quality layer (OpenJPEG's fixed-quality mode). A
# fixed compression ratio does not work on small images: below ~300 bytes the codestream's own
# headers leave no room for data, so every ratio beyond ~10 gives the same image at 32 × 32 px.
# These targets match ratios of about 15, 35, 80 and 200 on 224 px natural images.
JPEG2000_TARGET_PSNRS_DB = (30.0, 26.0, 22.0, 18.0)
# Chromatic aberration: shift in pixels of R and of B, in opposite directions (random per image).
CHROMATIC_ABERRATION_SHIFTS = (1.0, 2.0, 4.0, 6.0)
# Salt and pepper: fraction of pixels set to black or white (half each on average).
SALT_AND_PEPPER_FRACTIONS = (0.02, 0.05, 0.1, 0.2)
# Non-Gaussian random noise: std of the log-normal factor on every Fourier amplitude.
FOURIER_AMPLITUDE_NOISE_STDS = (0.2, 0.4, 0.6, 0.8)
# Y+N and CbCr+N: std of the additive Gaussian noise on Y, or on each of Cb and Cr (data in
# [0, 1]); the same stds for both, so the two differ only in where the noise goes.
LUMA_NOISE_STDS = (0.04, 0.08, 0.16, 0.24)
CHROMA_NOISE_STDS = LUMA_NOISE_STDS
# Inpainting: number of strokes and their opacity.
INPAINTING_STROKE_COUNTS = (3, 6, 9, 12)
INPAINTING_OPACITIES = (0.4, 0.55, 0.7, 0.85)
# Targeted occlusion: number of cells of an 8 × 8 grid blacked out (the most salient ones).
OCCLUSION_GRID_CELLS_PER_SIDE = 8
OCCLUDED_CELL_COUNTS = (1, 2, 4, 8)
# Mixture: the paper's four components (Sec. 3.1 "Mixed Noise": "Additive Gaussian noise in CbCr
# channels, Salt and pepper, Inpainting and Jpeg compression"), composed on every image in this
# order (our choice, the paper gives none): what covers the scene (inpainted strokes), sensor noise
# (CbCr+N), storage (JPEG), transmission errors (salt and pepper), each at the mixture's strength.
MIXTURE_COMPONENTS = ("inpainting", "cbcr_noise", "jpeg", "salt_and_pepper")

# Inpainting strokes: quadratic Bézier curves drawn as polylines of this many segments, with a
# width of INPAINTING_WIDTH_FRACTION of the shorter image side (at least 1.5 px), × U(0.75, 1.5).
_STROKE_SEGMENTS = 12
INPAINTING_WIDTH_FRACTION = 0.02
_MIN_STROKE_WIDTH_PX = 1.5

# Full-range YCbCr of ITU-R BT.601 (the JPEG/JFIF convention), for RGB in [0, 1].
_RGB_TO_YCBCR = np.array(
    [RGB_TO_GRAY_WEIGHTS, [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
    dtype=np.float32,
)
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR).astype(np.float32)
_YCBCR_OFFSET = np.array([0.0, 0.5, 0.5], dtype=np.float32)

SaliencyFn = Callable[[jax.Array, jax.Array], jax.Array]
"""(images (B, H, W, 3), labels (B,)) -> (B, H, W) saliency of each image's labelled class."""
DistortionFn = Callable[..., jax.Array | np.ndarray]


def _check_images(images: jax.Array | np.ndarray) -> None:
    """Raises ValueError unless `images` is a floating (B, H, W, 3) array."""
    if np.ndim(images) != 4 or np.shape(images)[-1] != 3:
        raise ValueError(
            f"images must be RGB in [0, 1] with shape (B, H, W, 3), got shape {np.shape(images)}."
        )
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must have a floating dtype, got {images.dtype}.")


def _level(levels: tuple[float, ...], strength: int) -> float:
    """The parameter of `strength` (1…4) among the four `levels`."""
    return levels[check_integer(strength, "strength", 1, len(levels)) - 1]


def _finish(distorted: jax.Array, images: jax.Array) -> jax.Array:
    """Clips to [0, 1] and restores the input dtype."""
    return jnp.clip(distorted, 0.0, 1.0).astype(images.dtype)


def _convolve_each_image(images: jax.Array, kernels: jax.Array) -> jax.Array:
    """Convolves image b (all channels) with kernels[b] (odd K × K), reflect-padded to keep size."""
    kernel_size = kernels.shape[-1]
    pad = kernel_size // 2
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    channels = images.shape[-1]

    def convolve_one(image: jax.Array, kernel: jax.Array) -> jax.Array:
        depthwise_kernel = jnp.tile(kernel[:, :, None, None], (1, 1, 1, channels))
        return jax.lax.conv_general_dilated(
            image[None],
            depthwise_kernel.astype(image.dtype),
            window_strides=(1, 1),
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels,
        )[0]

    return jax.vmap(convolve_one)(padded, kernels)


def _centered_grid(size: int) -> tuple[jax.Array, jax.Array]:
    """(row, column) offsets from the centre of a size × size kernel, each (size, size)."""
    offsets = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
    return jnp.meshgrid(offsets, offsets, indexing="ij")


def _distance_to_segments(points: jax.Array, starts: jax.Array, ends: jax.Array) -> jax.Array:
    """Distance from each of points (..., 2) to the nearest of the segments starts→ends (S, 2)."""
    direction = ends - starts
    relative = points[..., None, :] - starts
    length_squared = jnp.maximum(jnp.sum(direction**2, axis=-1), 1e-12)
    along = jnp.clip(jnp.sum(relative * direction, axis=-1) / length_squared, 0.0, 1.0)
    nearest = starts + along[..., None] * direction
    return jnp.min(jnp.linalg.norm(points[..., None, :] - nearest, axis=-1), axis=-1)


def motion_blur(images: jax.Array, strength: int, key: jax.Array) -> jax.Array:
    """Motion blur [M.Blur]: convolution with a straight motion path in a random direction.

    Paper Sec. 3.1 ("We convolve the image with 2D blurring kernels of different sizes"). The
    kernel is an anti-aliased line (weight max(0, 1 − distance to the path)) of length
    `MOTION_BLUR_LENGTHS[strength − 1]` = 5, 9, 13, 17 px through the kernel centre, normalised
    to sum 1; its direction is uniform in [0, π), drawn per image from `key`. Borders are
    reflect-padded.
    """
    _check_images(images)
    length = _level(MOTION_BLUR_LENGTHS, strength)
    angles = jax.random.uniform(key, (images.shape[0],), maxval=jnp.pi)
    rows, columns = _centered_grid(length)
    grid_points = jnp.stack([rows, columns], axis=-1)
    half_path = (length - 1) / 2 * jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)

    def kernel_for(half_path_vector: jax.Array) -> jax.Array:
        distance = _distance_to_segments(
            grid_points, -half_path_vector[None], half_path_vector[None]
        )
        weights = jnp.maximum(1.0 - distance, 0.0)
        return weights / jnp.sum(weights)

    return _finish(_convolve_each_image(images, jax.vmap(kernel_for)(half_path)), images)


def defocus_blur(images: jax.Array, strength: int, key: jax.Array) -> jax.Array:
    """Defocus blur [D.Blur]: convolution with a disk (pillbox) point-spread function.

    Paper Sec. 3.1 (blur kernels of different sizes). The disk has radius
    `DEFOCUS_BLUR_RADII[strength − 1]` = 1, 2, 3, 4.5 px with an anti-aliased rim
    (weight clip(r + 0.5 − distance, 0, 1)), normalised to sum 1; borders are reflect-padded.

    `key` is unused (defocus is deterministic); it keeps the common distortion signature.
    """
    del key
    _check_images(images)
    radius = _level(DEFOCUS_BLUR_RADII, strength)
    size = 2 * int(np.ceil(radius)) + 1
    rows, columns = _centered_grid(size)
    weights = jnp.clip(radius + 0.5 - jnp.hypot(rows, columns), 0.0, 1.0)
    kernels = jnp.broadcast_to(weights / jnp.sum(weights), (images.shape[0], size, size))
    return _finish(_convolve_each_image(images, kernels), images)


def chromatic_aberration(images: jax.Array, strength: int, key: jax.Array) -> jax.Array:
    """Chromatic aberration [Aber.]: R and B shifted in opposite directions, G kept.

    Paper Sec. 3.1 ("We simply shift RGB channels of an image towards different directions").
    The shift is `CHROMATIC_ABERRATION_SHIFTS[strength − 1]` = 1, 2, 4, 6 px along a direction
    drawn uniformly per image from `key`; R moves by +shift, B by −shift, resampled bilinearly
    (sub-pixel shifts) with edge values repeated at the borders.
    """
    _check_images(images)
    shift = _level(CHROMATIC_ABERRATION_SHIFTS, strength)
    angles = jax.random.uniform(key, (images.shape[0],), maxval=2 * jnp.pi)
    height, width = images.shape[1:3]
    rows, columns = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
    )
    channel_signs = jnp.array([1.0, 0.0, -1.0])

    def shift_image(image: jax.Array, angle: jax.Array) -> jax.Array:
        def shift_channel(channel: jax.Array, sign: jax.Array) -> jax.Array:
            coordinates = [
                rows - sign * shift * jnp.sin(angle),
                columns - sign * shift * jnp.cos(angle),
            ]
            return jax.scipy.ndimage.map_coordinates(channel, coordinates, order=1, mode="nearest")

        return jax.vmap(shift_channel, in_axes=(-1, 0), out_axes=-1)(image, channel_signs)

    return _finish(jax.vmap(shift_image)(images, angles), images)


def salt_and_pepper(images: jax.Array, strength: int, key: jax.Array) -> jax.Array:
    """Salt and pepper [S.&P.]: a random fraction of pixels set to black or white.

    Paper Sec. 3.1 ("We randomly select pixels in the image according to a uniform distribution,
    and set their values to 0 or 255"). A pixel (all three channels) is hit when its uniform draw
    is below `SALT_AND_PEPPER_FRACTIONS[strength − 1]` = 2, 5, 10, 20 %, and becomes white or
    black with probability 1/2. The draws do not depend on the strength, so the hit pixels of a
    weaker level are a subset of those of a stronger one.
    """
    _check_images(images)
    fraction = _level(SALT_AND_PEPPER_FRACTIONS, strength)
    hit_draw, salt_draw = jnp.split(jax.random.uniform(key, (*images.shape[:3], 2)), 2, axis=-1)
    hit = hit_draw < fraction
    salt = salt_draw < 0.5
    return _finish(jnp.where(hit, salt.astype(images.dtype), images), images)


def non_gaussian_random_noise(images: jax.Array, strength: int, key: jax.Array) -> jax.Array:
    """Non-Gaussian random noise [NGRN]: Gaussian noise in the Fourier domain.

    Paper Sec. 3.1 ("We employ FFT and inverse FFT to obtain the representations in different
    domains, and employ noise sampled from a Gaussian distribution with zero mean and different
    standard deviations"). Our reading: every Fourier amplitude of every channel (2-D real FFT
    over H, W) is multiplied by exp(σ·ε), ε ~ N(0, 1), phases kept, σ =
    `FOURIER_AMPLITUDE_NOISE_STDS[strength − 1]` = 0.2, 0.4, 0.6, 0.8. The DC term is left as is
    so the mean colour stays. The resulting pixel-domain noise depends on the image content and
    is not Gaussian (it fluctuates above and below the image where the image has structure).
    """
    _check_images(images)
    noise_std = _level(FOURIER_AMPLITUDE_NOISE_STDS, strength)
    height, width = images.shape[1:3]
    spectrum = jnp.fft.rfft2(images.astype(jnp.float32), axes=(1, 2))
    log_amplitude_noise = noise_std * jax.random.normal(key, spectrum.shape)
    log_amplitude_noise = log_amplitude_noise.at[:, 0, 0, :].set(0.0)
    noisy = jnp.fft.irfft2(spectrum * jnp.exp(log_amplitude_noise), s=(height, width), axes=(1, 2))
    return _finish(noisy, images)


def _noise_in_ycbcr(
    images: jax.Array, noise_std: float, key: jax.Array, noisy_channels: tuple[int, ...]
) -> jax.Array:
    """Adds N(0, noise_std²) to the given YCbCr channels (0 = Y, 1 = Cb, 2 = Cr) and returns RGB."""
    ycbcr = images.astype(jnp.float32) @ _RGB_TO_YCBCR.T + _YCBCR_OFFSET
    channel_mask = jnp.zeros(3).at[jnp.array(noisy_channels)].set(1.0)
    ycbcr = ycbcr + noise_std * channel_mask * jax.random.normal(key, ycbcr.shape)
    return _finish((ycbcr - _YCBCR_OFFSET) @ _YCBCR_TO_RGB.T, images)


def luma_noise(images: jax.Array, strength: int, key: jax.Array) -> jax.Array:
    """Y+N: additive Gaussian noise on the luma channel Y of full-range BT.601 YCbCr.

    Paper Sec. 3.1 ("we transform the images into YCbCr color space, and employ additive Gaussian
    noise to the Y channel"), std `LUMA_NOISE_STDS[strength − 1]` = 0.04, 0.08, 0.16, 0.24 for
    data in [0, 1]; the result is converted back to RGB and clipped.
    """
    _check_images(images)
    return _noise_in_ycbcr(images, _level(LUMA_NOISE_STDS, strength), key, (0,))


def cbcr_noise(images: jax.Array, strength: int, key: jax.Array) -> jax.Array:
    """CbCr+N [CC+N]: additive Gaussian noise on the chroma channels Cb and Cr.

    Paper Sec. 3.1 (noise on "the CbCr channels (blue-difference and red-difference chroma
    components)"), std `CHROMA_NOISE_STDS[strength − 1]` = 0.04, 0.08, 0.16, 0.24 for data in
    [0, 1], independent on Cb and Cr; converted back to RGB and clipped.
    """
    _check_images(images)
    return _noise_in_ycbcr(images, _level(CHROMA_NOISE_STDS, strength), key, (1, 2))


def inpainting(images: jax.Array, strength: int, key: jax.Array) -> jax.Array:
    """Inpainting [Inp.]: translucent random strokes painted over the image.

    Paper Sec. 3.1 ("randomly generated strings with different transparencies"); we draw
    scribbles instead of text: `INPAINTING_STROKE_COUNTS[strength − 1]` = 3, 6, 9, 12 strokes,
    each a quadratic Bézier curve through three uniform points of the image, of a random RGB
    colour and width `INPAINTING_WIDTH_FRACTION` of the shorter side (≥ 1.5 px) × U(0.75, 1.5),
    alpha-composited in order with opacity `INPAINTING_OPACITIES[strength − 1]` = 0.4, 0.55, 0.7,
    0.85 and an anti-aliased edge. A weaker level paints the first strokes of a stronger one.
    """
    _check_images(images)
    stroke_count = _level(INPAINTING_STROKE_COUNTS, strength)
    opacity = _level(INPAINTING_OPACITIES, strength)
    batch, height, width = images.shape[:3]
    # One draw for the strongest level, so that every level paints a prefix of the same strokes:
    # per stroke 3 control points (6 numbers), an RGB colour (3) and a width factor (1).
    draws = jax.random.uniform(key, (batch, INPAINTING_STROKE_COUNTS[-1], 10))[:, :stroke_count]
    image_size = jnp.array([height, width], dtype=jnp.float32)
    control_points = draws[..., :6].reshape(batch, stroke_count, 3, 1, 2) * image_size
    colours = draws[..., 6:9]
    base_width = max(_MIN_STROKE_WIDTH_PX, INPAINTING_WIDTH_FRACTION * min(height, width))
    widths = base_width * (0.75 + 0.75 * draws[..., 9])
    # Points of each quadratic Bézier curve, (B, strokes, segments + 1, 2).
    curve_t = jnp.linspace(0.0, 1.0, _STROKE_SEGMENTS + 1)[:, None]
    start, middle, end = control_points[:, :, 0], control_points[:, :, 1], control_points[:, :, 2]
    polylines = (1 - curve_t) ** 2 * start + 2 * (1 - curve_t) * curve_t * middle + curve_t**2 * end
    rows, columns = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
    )
    pixel_centres = jnp.stack([rows, columns], axis=-1)
    distances = jax.vmap(
        jax.vmap(lambda line: _distance_to_segments(pixel_centres, line[:-1], line[1:]))
    )(polylines)
    # Coverage of each stroke, (B, strokes, H, W, 1).
    coverage = (
        opacity * jnp.clip(widths[..., None, None] / 2 + 0.5 - distances, 0.0, 1.0)[..., None]
    )
    # Strokes composited in order ("over"): stroke i is seen through the strokes after it.
    transparency = 1.0 - coverage
    seen_through_later = jnp.concatenate(
        [
            jnp.cumprod(transparency[:, ::-1], axis=1)[:, ::-1][:, 1:],
            jnp.ones_like(coverage[:, :1]),
        ],
        axis=1,
    )
    paint = jnp.sum(colours[:, :, None, None, :] * coverage * seen_through_later, axis=1)
    background_seen = jnp.prod(transparency, axis=1)
    return _finish(images * background_seen + paint, images)


def gradient_saliency(apply_fn: Callable[[jax.Array], jax.Array]) -> SaliencyFn:
    """Builds a saliency map |∂ logit_y / ∂ x| of the true class y (Simonyan et al. 2014).

    Paper Sec. 3.1, targeted occlusion: "We employ gradient methods to obtain a saliency map that
    records pixel-wise classification scores" and the occlusion "is designed to obliterate the
    information important for recognition of a target class"; Sec. 3.2: it "is only targeted for
    the ground truth label". The logit differentiated is that of each image's label (not the
    predicted class), and the saliency of a pixel is the largest |gradient| over its channels.

    Args:
      apply_fn: images (B, H, W, 3) -> logits (B, classes), e.g.
        `functools.partial(model.apply, variables)` of a reference classifier in eval mode (the
        paper: a plain ResNet-18). It must treat the images of a batch independently.

    Returns:
      A jit-able `saliency_fn(images, labels) -> (B, H, W)` non-negative saliency map; `labels`
      are integer classes, (B,).
    """

    def true_class_logit_sum(images: jax.Array, labels: jax.Array) -> jax.Array:
        logits = apply_fn(images)
        chex.assert_rank(logits, 2)
        labels = jnp.asarray(labels, jnp.int32)
        return jnp.sum(jnp.take_along_axis(logits, labels[:, None], axis=-1))

    def saliency_fn(images: jax.Array, labels: jax.Array) -> jax.Array:
        chex.assert_rank(images, 4)
        chex.assert_shape(labels, (images.shape[0],))
        return jnp.max(jnp.abs(jax.grad(true_class_logit_sum)(images, labels)), axis=-1)

    return saliency_fn


def image_gradient_saliency(images: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """Model-free stand-in saliency: magnitude of the spatial gradient of the luma, (B, H, W).

    Salient = strong edges; `labels` are ignored. Used by `save_distortion_gallery` when no
    reference model is given; for the paper's targeted occlusion use `gradient_saliency` of a
    trained classifier.
    """
    del labels
    _check_images(images)
    luma = images.astype(jnp.float32) @ jnp.asarray(RGB_TO_GRAY_WEIGHTS)
    row_gradient, column_gradient = jnp.gradient(luma, axis=(1, 2))
    return jnp.hypot(row_gradient, column_gradient)


def targeted_occlusion(
    images: jax.Array,
    strength: int,
    key: jax.Array,
    saliency_fn: SaliencyFn,
    labels: jax.Array,
) -> jax.Array:
    """Targeted occlusion [Occ.]: the most salient clusters of pixels are blacked out.

    Paper Sec. 3.1 ("we occlude some clusters of pixels that contribute most to the final
    classification score with black masks ... increased by increasing the number of clusters
    occluded"). Clusters are the cells of an `OCCLUSION_GRID_CELLS_PER_SIDE`² = 8 × 8 grid over
    the image; the `OCCLUDED_CELL_COUNTS[strength − 1]` = 1, 2, 4, 8 cells with the largest summed
    saliency (1.6 % … 12.5 % of the image) are set to 0.

    Args:
      images: (B, H, W, 3) in [0, 1], H and W at least 8.
      strength: 1…4.
      key: unused (the occlusion is deterministic given the saliency); kept for the common
        distortion signature.
      saliency_fn: (images, labels) -> (B, H, W) saliency, e.g. `gradient_saliency(apply_fn)`
        of the reference model (the paper: one plain ResNet-18 for every evaluated model).
      labels: (B,) the true classes, whose saliency is occluded.
    """
    del key
    _check_images(images)
    occluded_cells = _level(OCCLUDED_CELL_COUNTS, strength)
    cells_per_side = OCCLUSION_GRID_CELLS_PER_SIDE
    batch, height, width = images.shape[:3]
    if min(height, width) < cells_per_side:
        raise ValueError(
            f"images must be at least {cells_per_side} px high and wide for targeted occlusion, "
            f"got shape {images.shape}."
        )
    saliency = saliency_fn(images, labels)
    chex.assert_shape(saliency, (batch, height, width))
    row_cells = jax.nn.one_hot(jnp.arange(height) * cells_per_side // height, cells_per_side)
    column_cells = jax.nn.one_hot(jnp.arange(width) * cells_per_side // width, cells_per_side)
    cell_saliency = jnp.einsum("bhw,hi,wj->bij", saliency, row_cells, column_cells)
    _, top_cells = jax.lax.top_k(cell_saliency.reshape(batch, -1), occluded_cells)
    cell_mask = jnp.sum(jax.nn.one_hot(top_cells, cells_per_side**2), axis=1)
    cell_mask = cell_mask.reshape(batch, cells_per_side, cells_per_side)
    pixel_mask = jnp.einsum("bij,hi,wj->bhw", cell_mask, row_cells, column_cells)
    return _finish(jnp.where(pixel_mask[..., None] > 0, 0.0, images), images)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _device_distortion(name: str, images: jax.Array, strength: int, key: jax.Array) -> jax.Array:
    """`DISTORTIONS[name]` (a device one without saliency), compiled once per name and strength."""
    return DISTORTIONS[name].function(images, strength, key)


def mixture(images: np.ndarray | jax.Array, strength: int, key: jax.Array) -> np.ndarray:
    """Mixed noise [Mix.] (host): the paper's four components composed on every image.

    Paper Sec. 3.1 ("a mixture of various types of synthetic distortions (Additive Gaussian noise
    in CbCr channels, Salt and pepper, Inpainting and Jpeg compression) to simulate the real-world
    distortions"). Every image gets all of `MIXTURE_COMPONENTS`, in that order: inpainting, then
    CbCr+N, then JPEG (the host codec of `jpeg`), then salt and pepper, each at the same
    `strength` and with its own key split from `key` (so the draws of a weaker level are those of
    a stronger one). The device components run jitted, JPEG on the host in between.

    Returns:
      numpy (B, H, W, 3), the input's dtype, in [0, 1].
    """
    _check_images(images)
    check_integer(strength, "strength", 1, len(STRENGTHS))
    dtype = images.dtype
    mixed: np.ndarray | jax.Array = images
    for name, component_key in zip(
        MIXTURE_COMPONENTS, jax.random.split(key, len(MIXTURE_COMPONENTS)), strict=True
    ):
        if DISTORTIONS[name].kind == "host":
            mixed = DISTORTIONS[name].function(np.asarray(mixed), strength, component_key)
        else:
            mixed = _device_distortion(
                name, jnp.asarray(mixed, jnp.float32), strength, component_key
            )
    return np.asarray(mixed).astype(dtype)


def _encode_decode(images: np.ndarray, save_options: Mapping[str, object]) -> np.ndarray:
    """Round-trips each image through Pillow's encoder/decoder; float in [0, 1] in and out."""
    images = np.asarray(images)
    _check_images(images)
    decoded = np.empty(images.shape, dtype=np.float32)
    pixels = np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    for index, image in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(image, mode="RGB").save(buffer, **save_options)
        buffer.seek(0)
        with Image.open(buffer) as coded:
            decoded[index] = np.asarray(coded.convert("RGB"), dtype=np.float32) / 255.0
    return decoded.astype(images.dtype)


def jpeg(images: np.ndarray, strength: int, key: jax.Array | None = None) -> np.ndarray:
    """JPEG compression [Jpeg] (host, Pillow's libjpeg), baseline with 4:2:0 chroma subsampling.

    Paper Sec. 3.1 (Jpeg [Wallace 1992], "a large compression ratio" loses high frequencies).
    Quality `JPEG_QUALITIES[strength − 1]` = 30, 15, 8, 4. Images are quantised to 8 bits first.
    `key` is unused (the codec is deterministic); it keeps the common distortion signature.

    Returns:
      numpy (B, H, W, 3), the input's dtype, in [0, 1].
    """
    del key
    quality = _level(JPEG_QUALITIES, strength)
    return _encode_decode(images, {"format": "JPEG", "quality": quality, "subsampling": "4:2:0"})


def jpeg2000(images: np.ndarray, strength: int, key: jax.Array | None = None) -> np.ndarray:
    """JPEG 2000 compression [Jpeg2K] (host, Pillow's OpenJPEG plugin), irreversible 9/7 wavelet.

    Paper Sec. 3.1. One quality layer coded down to the target PSNR
    `JPEG2000_TARGET_PSNRS_DB[strength − 1]` = 30, 26, 22, 18 dB (OpenJPEG's "dB" quality mode;
    see the constant for why not a compression ratio). `key` is unused (the codec is
    deterministic). Raises RuntimeError if this Pillow was built without OpenJPEG.

    Returns:
      numpy (B, H, W, 3), the input's dtype, in [0, 1].
    """
    del key
    from PIL import features

    if not features.check("jpg_2000"):
        raise RuntimeError(
            "JPEG 2000 needs Pillow built with OpenJPEG (PIL.features.check('jpg_2000') is "
            "False); install a Pillow wheel that bundles it."
        )
    target_psnr_db = _level(JPEG2000_TARGET_PSNRS_DB, strength)
    return _encode_decode(
        images,
        {
            "format": "JPEG2000",
            "quality_mode": "dB",
            "quality_layers": [target_psnr_db],
            "irreversible": True,
        },
    )


@dataclasses.dataclass(frozen=True)
class Distortion:
    """One distortion of the paper (Sec. 3.1, Table 2).

    Attributes:
      name: registry key.
      title: the paper's column label in Table 2.
      kind: "device" (pure jnp, jit-able with `strength` static) or "host" (numpy + Pillow).
      function: (images, strength, key) -> images; targeted occlusion also takes `saliency_fn`
        and `labels`.
      parameter: what the four levels are.
      levels: the parameter at strengths 1, 2, 3, 4.
      needs_saliency: whether `function` needs `saliency_fn` and `labels` keyword arguments.
    """

    name: str
    title: str
    kind: str
    function: DistortionFn
    parameter: str
    levels: tuple[float, ...]
    needs_saliency: bool = False


# In the paper's order (Table 2 columns).
DISTORTIONS: dict[str, Distortion] = {
    distortion.name: distortion
    for distortion in (
        Distortion(
            "motion_blur", "M.Blur", "device", motion_blur, "length px", MOTION_BLUR_LENGTHS
        ),
        Distortion(
            "defocus_blur", "D.Blur", "device", defocus_blur, "radius px", DEFOCUS_BLUR_RADII
        ),
        Distortion("jpeg", "Jpeg", "host", jpeg, "quality", JPEG_QUALITIES),
        Distortion(
            "jpeg2000", "Jpeg2K", "host", jpeg2000, "target PSNR dB", JPEG2000_TARGET_PSNRS_DB
        ),
        Distortion(
            "chromatic_aberration",
            "Aber.",
            "device",
            chromatic_aberration,
            "shift px",
            CHROMATIC_ABERRATION_SHIFTS,
        ),
        Distortion(
            "salt_and_pepper",
            "S.&P.",
            "device",
            salt_and_pepper,
            "fraction",
            SALT_AND_PEPPER_FRACTIONS,
        ),
        Distortion(
            "non_gaussian_random_noise",
            "NGRN",
            "device",
            non_gaussian_random_noise,
            "log-amplitude std",
            FOURIER_AMPLITUDE_NOISE_STDS,
        ),
        Distortion("luma_noise", "Y+N", "device", luma_noise, "std", LUMA_NOISE_STDS),
        Distortion("cbcr_noise", "CC+N", "device", cbcr_noise, "std", CHROMA_NOISE_STDS),
        Distortion(
            "inpainting",
            "Inp.",
            "device",
            inpainting,
            "opacity (3, 6, 9, 12 strokes)",
            INPAINTING_OPACITIES,
        ),
        Distortion(
            "targeted_occlusion",
            "Occ.",
            "device",
            targeted_occlusion,
            "cells of 64",
            OCCLUDED_CELL_COUNTS,
            needs_saliency=True,
        ),
        Distortion("mixture", "Mix.", "host", mixture, "strength of each component", STRENGTHS),
    )
}


def apply_distortion(
    name: str,
    images: jax.Array | np.ndarray,
    strength: int,
    key: jax.Array,
    saliency_fn: SaliencyFn | None = None,
    labels: jax.Array | np.ndarray | None = None,
) -> jax.Array | np.ndarray:
    """Applies `DISTORTIONS[name]` at `strength` (1…4) to RGB images (B, H, W, 3) in [0, 1].

    Args:
      name: one of `DISTORTIONS`.
      images: (B, H, W, 3) float in [0, 1]; jax for "device" distortions, numpy or jax for "host".
      strength: 1 (weakest) … 4 (strongest).
      key: PRNG key; the result is deterministic given it.
      saliency_fn: (images, labels) -> (B, H, W) saliency, required by "targeted_occlusion" and
        ignored by the others.
      labels: (B,) true classes, required by "targeted_occlusion" (it occludes the saliency of
        the true class) and ignored by the others.

    Returns:
      Distorted images of the input's shape and dtype (numpy for "host" distortions).
    """
    if name not in DISTORTIONS:
        raise ValueError(f"name must be one of {tuple(DISTORTIONS)}, got {name!r}.")
    distortion = DISTORTIONS[name]
    if distortion.needs_saliency:
        if saliency_fn is None:
            raise ValueError(
                f"saliency_fn is required for {name!r}, got None; build one with "
                "gradient_saliency(apply_fn)."
            )
        if labels is None:
            raise ValueError(
                f"labels are required for {name!r}, got None: it occludes where the saliency of "
                "each image's true class is highest."
            )
        return distortion.function(images, strength, key, saliency_fn=saliency_fn, labels=labels)
    return distortion.function(images, strength, key)


def _distort_at_all_strengths(
    name: str,
    images: jax.Array,
    key: jax.Array,
    saliency_fn: SaliencyFn | None,
    labels: jax.Array | None,
) -> list[jax.Array | np.ndarray]:
    """`apply_distortion` at strengths 1…4 with the same key."""
    return [
        apply_distortion(name, images, strength, key, saliency_fn=saliency_fn, labels=labels)
        for strength in STRENGTHS
    ]


def save_distortion_gallery(
    path: str | pathlib.Path,
    image: np.ndarray | jax.Array,
    key: jax.Array,
    saliency_fn: SaliencyFn | None = None,
    label: int = 0,
) -> pathlib.Path:
    """Writes one PNG of `image` under every distortion (rows) and strength (columns).

    Row r is `DISTORTIONS` in the paper's order; its first column is the clean image and the next
    four are strengths 1…4, titled "<paper label> <strength>". Every strength of a distortion uses
    the same key, so a row shows the same draw growing stronger (cf. the paper's Figure 3).

    Args:
      path: PNG file to write (layout of `noise_research.viz.save_image_grid`, 5 columns).
      image: one RGB image (H, W, 3) in [0, 1], H and W at least 8.
      key: PRNG key.
      saliency_fn: saliency for the targeted-occlusion row; defaults to the model-free
        `image_gradient_saliency`.
      label: the image's true class (the targeted occlusion occludes its saliency).

    Returns:
      The path written.
    """
    # Imported here so that importing the data package does not pull in matplotlib (viz.plots).
    from noise_research.viz import save_image_grid

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be RGB with shape (H, W, 3), got shape {image.shape}.")
    saliency_fn = image_gradient_saliency if saliency_fn is None else saliency_fn
    tiles, titles = [], []
    for row, (name, distortion) in enumerate(DISTORTIONS.items()):
        all_strengths = functools.partial(
            _distort_at_all_strengths,
            name,
            saliency_fn=saliency_fn,
            labels=jnp.full((1,), label, jnp.int32),
        )
        if distortion.kind == "device":
            # One compiled call per row; its four strengths share the random draws.
            all_strengths = jax.jit(all_strengths)
        distorted = all_strengths(image[None], jax.random.fold_in(key, row))
        tiles.append(image)
        titles.append("clean")
        for strength, distorted_image in zip(STRENGTHS, distorted, strict=True):
            tiles.append(np.asarray(distorted_image)[0])
            titles.append(f"{distortion.title} {strength}")
    return save_image_grid(
        path, tiles, titles=titles, ncols=1 + len(STRENGTHS), value_range=(0.0, 1.0)
    )
