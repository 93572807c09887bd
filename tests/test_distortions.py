"""Tests for the twelve distortions of the feature-quantization paper (data/distortions.py)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from PIL import Image

from noise_research.data import (
    DISTORTIONS,
    apply_distortion,
    distortions,
    gradient_saliency,
    image_gradient_saliency,
    save_distortion_gallery,
)
from noise_research.viz.images import GRID_PADDING_PX, TITLE_HEIGHT_PX

IMAGE_SIDE = 32
# Distortions whose result does not depend on the key.
DETERMINISTIC_DISTORTIONS = {"defocus_blur", "jpeg", "jpeg2000", "targeted_occlusion"}
PAPER_ORDER = (
    "motion_blur",
    "defocus_blur",
    "jpeg",
    "jpeg2000",
    "chromatic_aberration",
    "salt_and_pepper",
    "non_gaussian_random_noise",
    "luma_noise",
    "cbcr_noise",
    "inpainting",
    "targeted_occlusion",
    "mixture",
)


@pytest.fixture(scope="module")
def clean_images() -> jax.Array:
    """Four natural RGB images, 32 × 32, float32 in [0, 1]."""
    images = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        rgb = getattr(skimage.data, name)()
        side = min(rgb.shape[:2])
        square = Image.fromarray(rgb[:side, :side]).resize(
            (IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.LANCZOS
        )
        images.append(np.asarray(square, dtype=np.float32) / 255.0)
    return jnp.asarray(np.stack(images))


def _mean_psnr(distorted, clean) -> float:
    squared_error = np.mean((np.asarray(distorted) - np.asarray(clean)) ** 2, axis=(1, 2, 3))
    return float(np.mean(10.0 * np.log10(1.0 / squared_error)))


def _rbg_key(seed: int) -> jax.Array:
    """A PRNG key of the "rbg" implementation: the distortions take any key, and XLA on CPU
    compiles rbg draws ~10× faster than threefry ones, which keeps this file fast."""
    return jax.random.key(seed, impl="rbg")


def _distort_at_all_strengths(name: str):
    """(images, key) -> [images at strengths 1…4]; one jitted call for device distortions."""

    def distort(images, key):
        labels = jnp.zeros(images.shape[0], jnp.int32)
        return [
            apply_distortion(
                name, images, strength, key, saliency_fn=image_gradient_saliency, labels=labels
            )
            for strength in (1, 2, 3, 4)
        ]

    return jax.jit(distort) if DISTORTIONS[name].kind == "device" else distort


def test_registry_follows_the_paper():
    assert tuple(DISTORTIONS) == PAPER_ORDER
    for name, distortion in DISTORTIONS.items():
        assert distortion.name == name
        # The mixture contains the JPEG codec (section 3.1), a host one.
        assert distortion.kind == ("host" if name in ("jpeg", "jpeg2000", "mixture") else "device")
        assert len(distortion.levels) == 4
    assert [d.title for d in DISTORTIONS.values()] == [
        "M.Blur", "D.Blur", "Jpeg", "Jpeg2K", "Aber.", "S.&P.", "NGRN",
        "Y+N", "CC+N", "Inp.", "Occ.", "Mix.",
    ]  # fmt: skip


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_distortion_contract(name, clean_images):
    """Shape, dtype, range, determinism, key dependence and monotone PSNR, jitted on device."""
    distort = _distort_at_all_strengths(name)
    outputs = distort(clean_images, _rbg_key(7))
    for output in outputs:
        if DISTORTIONS[name].kind == "device":
            assert isinstance(output, jax.Array)
        assert output.shape == clean_images.shape
        assert output.dtype == jnp.float32
        assert float(np.min(output)) >= 0.0 and float(np.max(output)) <= 1.0

    psnrs = [_mean_psnr(output, clean_images) for output in outputs]
    assert all(weaker > stronger for weaker, stronger in itertools.pairwise(psnrs)), psnrs
    assert psnrs[0] < 40.0, f"strength 1 barely changes the images: {psnrs}"

    same_key = distort(clean_images, _rbg_key(7))
    other_key = distort(clean_images, _rbg_key(8))
    for strength_index in range(4):
        np.testing.assert_array_equal(same_key[strength_index], outputs[strength_index])
        difference = np.abs(np.asarray(other_key[strength_index] - outputs[strength_index]))
        if name in DETERMINISTIC_DISTORTIONS:
            assert np.max(difference) == 0.0
        else:
            assert np.max(difference) > 0.05


def test_host_codecs_accept_numpy_and_keep_float64(clean_images):
    images = np.asarray(clean_images, dtype=np.float64)
    for name in ("jpeg", "jpeg2000"):
        coded = apply_distortion(name, images, 1, jax.random.key(0))
        assert isinstance(coded, np.ndarray) and coded.dtype == np.float64
        assert coded.shape == images.shape


def test_jpeg2000_without_openjpeg_raises(monkeypatch, clean_images):
    monkeypatch.setattr("PIL.features.check", lambda feature: False)
    with pytest.raises(RuntimeError, match="OpenJPEG"):
        distortions.jpeg2000(np.asarray(clean_images), 1)


def test_salt_and_pepper_hits_the_documented_fraction():
    gray = jnp.full((2, 64, 64, 3), 0.5)
    for strength, fraction in enumerate(distortions.SALT_AND_PEPPER_FRACTIONS, start=1):
        # The default (threefry) key implementation works too.
        noisy = np.asarray(distortions.salt_and_pepper(gray, strength, jax.random.key(1)))
        hit = np.any(noisy != 0.5, axis=-1)
        assert abs(hit.mean() - fraction) < 0.25 * fraction + 0.005
        assert set(np.unique(noisy[hit])) <= {0.0, 1.0}
        # All three channels of a hit pixel take the same value.
        assert np.all(noisy[hit].min(axis=-1) == noisy[hit].max(axis=-1))


def test_chromatic_aberration_keeps_green_and_moves_red_and_blue(clean_images):
    shifted = np.asarray(distortions.chromatic_aberration(clean_images, 3, _rbg_key(2)))
    np.testing.assert_allclose(shifted[..., 1], np.asarray(clean_images)[..., 1], atol=1e-6)
    for channel in (0, 2):
        assert np.abs(shifted[..., channel] - np.asarray(clean_images)[..., channel]).mean() > 0.01


def test_blurs_and_noise_keep_a_constant_image():
    constant = jnp.full((1, 16, 16, 3), 0.3)
    key = _rbg_key(3)
    for name in ("motion_blur", "defocus_blur", "non_gaussian_random_noise"):
        np.testing.assert_allclose(
            np.asarray(apply_distortion(name, constant, 4, key)), 0.3, atol=1e-5, err_msg=name
        )


def test_luma_noise_keeps_chroma_and_cbcr_noise_keeps_luma():
    """Checked against BT.601 itself, not the module's matrix: Y = 0.299 R + 0.587 G + 0.114 B,
    Cb = (B − Y) / 1.772 and Cr = (R − Y) / 1.402 (1.772 = 2 (1 − 0.114), 1.402 = 2 (1 − 0.299)).
    Noise on Y alone keeps B − Y and R − Y, so it adds the same amount to R, G and B; noise on
    Cb and Cr alone keeps Y. Both use the same std, Cb and Cr independently: with one key, the
    Y, Cb and Cr changes are three independent draws of one normal distribution."""
    mid_gray = jnp.full((1, 128, 128, 3), 0.5)  # far from 0 and 1, so no clipping at strength 1
    key = _rbg_key(4)
    luma_change = np.asarray(distortions.luma_noise(mid_gray, 1, key), np.float64) - 0.5
    chroma_change = np.asarray(distortions.cbcr_noise(mid_gray, 1, key), np.float64) - 0.5

    def bt601_ycbcr(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        luma = rgb @ np.array([0.299, 0.587, 0.114])
        return (
            luma.ravel(),
            (rgb[..., 2] - luma).ravel() / 1.772,
            (rgb[..., 0] - luma).ravel() / 1.402,
        )

    np.testing.assert_allclose(luma_change[..., 0], luma_change[..., 1], atol=1e-5)
    np.testing.assert_allclose(luma_change[..., 2], luma_change[..., 1], atol=1e-5)
    luma_noise_y = bt601_ycbcr(luma_change)[0]
    chroma_noise_y, chroma_noise_cb, chroma_noise_cr = bt601_ycbcr(chroma_change)
    np.testing.assert_allclose(chroma_noise_y, 0.0, atol=1e-5)
    assert luma_noise_y.std() > 0.02
    np.testing.assert_allclose(
        [chroma_noise_cb.std(), chroma_noise_cr.std()], luma_noise_y.std(), rtol=0.04
    )
    # 128² draws: the sample correlation of independent draws is within ±0.04 (5 σ).
    assert abs(np.corrcoef(chroma_noise_cb, chroma_noise_cr)[0, 1]) < 0.04


def test_targeted_occlusion_blacks_out_the_most_salient_cells(clean_images):
    # Saliency peaks in the cell at grid position (2, 5), then in (6, 1): 4 × 4 px cells.
    saliency_map = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.float32)
    saliency_map[8:12, 20:24] = 2.0
    saliency_map[24:28, 4:8] = 1.0

    def saliency_fn(images, labels):
        return jnp.broadcast_to(saliency_map, images.shape[:3])

    key = _rbg_key(0)
    clean = np.asarray(clean_images)
    labels = jnp.zeros(clean.shape[0], jnp.int32)
    once = np.asarray(distortions.targeted_occlusion(clean_images, 1, key, saliency_fn, labels))
    twice = np.asarray(distortions.targeted_occlusion(clean_images, 2, key, saliency_fn, labels))
    expected_once = clean.copy()
    expected_once[:, 8:12, 20:24] = 0.0
    np.testing.assert_array_equal(once, expected_once)
    expected_twice = expected_once.copy()
    expected_twice[:, 24:28, 4:8] = 0.0
    np.testing.assert_array_equal(twice, expected_twice)


def test_gradient_saliency_of_a_linear_classifier_is_its_true_class_weights():
    """The paper's targeted occlusion is "only targeted for the ground truth label" (section
    3.2): the saliency is that of each image's label, not of the predicted class."""
    height, width, classes = 6, 5, 3
    rng = np.random.default_rng(5)
    weights = jnp.asarray(rng.normal(size=(height, width, 3, classes)), jnp.float32)
    images = jnp.asarray(rng.uniform(size=(2, height, width, 3)), jnp.float32)

    def apply_fn(batch):
        return jnp.einsum("bhwc,hwck->bk", batch, weights)

    top_class = np.argmax(np.asarray(apply_fn(images)), axis=-1)
    labels = (top_class + 1) % classes  # true classes that the model does not predict
    saliency = jax.jit(gradient_saliency(apply_fn))(images, jnp.asarray(labels))
    per_class = np.max(np.abs(np.asarray(weights)), axis=2)  # (H, W, classes)
    expected = per_class[..., labels].transpose(2, 0, 1)
    np.testing.assert_allclose(np.asarray(saliency), expected, rtol=1e-5)
    assert not np.allclose(expected, per_class[..., top_class].transpose(2, 0, 1))


def test_bad_arguments_raise_value_errors(clean_images):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="name must be one of"):
        apply_distortion("fog", clean_images, 1, key)
    for strength in (0, 5, 2.0):
        with pytest.raises(ValueError, match="strength"):
            apply_distortion("salt_and_pepper", clean_images, strength, key)
    with pytest.raises(ValueError, match="saliency_fn is required"):
        apply_distortion("targeted_occlusion", clean_images, 1, key)
    with pytest.raises(ValueError, match="labels are required"):
        apply_distortion(
            "targeted_occlusion", clean_images, 1, key, saliency_fn=image_gradient_saliency
        )
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        apply_distortion("motion_blur", clean_images[..., :1], 1, key)
    with pytest.raises(ValueError, match="floating"):
        apply_distortion("jpeg", np.zeros((1, 8, 8, 3), np.uint8), 1, key)


def test_gallery_png_has_one_row_per_distortion_and_five_columns(tmp_path, clean_images):
    path = save_distortion_gallery(tmp_path / "gallery.png", clean_images[0], _rbg_key(9))
    with Image.open(path) as png:
        assert png.format == "PNG"
        width, height = png.size
    assert width == 5 * (IMAGE_SIDE + GRID_PADDING_PX) + GRID_PADDING_PX
    assert height == 12 * (IMAGE_SIDE + TITLE_HEIGHT_PX + GRID_PADDING_PX) + GRID_PADDING_PX


def test_mixture_composes_all_four_of_the_paper_s_components_on_every_image(clean_images):
    """Section 3.1: "a mixture of various types of synthetic distortions (Additive Gaussian noise
    in CbCr channels, Salt and pepper, Inpainting and Jpeg compression)": every image gets all of
    them, JPEG through the host codec, salt and pepper last."""
    assert set(distortions.MIXTURE_COMPONENTS) == {
        "cbcr_noise", "salt_and_pepper", "inpainting", "jpeg"
    }  # fmt: skip
    key = _rbg_key(3)
    strength = 2
    mixed = apply_distortion("mixture", clean_images, strength, key)
    assert isinstance(mixed, np.ndarray) and mixed.dtype == np.float32

    expected = np.asarray(clean_images)
    for name, component_key in zip(
        distortions.MIXTURE_COMPONENTS, jax.random.split(key, 4), strict=True
    ):
        expected = np.asarray(apply_distortion(name, expected, strength, component_key))
    np.testing.assert_array_equal(mixed, expected)

    # Every image has salt-and-pepper pixels (~5 % at strength 2, all channels 0 or all 1)...
    extreme = np.all(mixed == 0.0, axis=-1) | np.all(mixed == 1.0, axis=-1)
    assert np.all(extreme.mean(axis=(1, 2)) > 0.02), extreme.mean(axis=(1, 2))
    # ... and away from them, every image differs from salt and pepper alone on the clean image
    # by more than JPEG's 8-bit rounding: the other components were applied to it too.
    salt_and_pepper_key = jax.random.split(key, 4)[3]
    only_salt_and_pepper = np.asarray(
        apply_distortion("salt_and_pepper", clean_images, strength, salt_and_pepper_key)
    )
    difference = np.abs(mixed - only_salt_and_pepper).max(axis=-1)
    assert np.all(np.where(extreme, 0.0, difference).mean(axis=(1, 2)) > 0.02)
