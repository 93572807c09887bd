"""Tests for TfdsGanImages: real GAN images (celeb_a, lsun, cifar10, any image set) through TFDS
data sources (mock data and a prepared array_record set of PNGs) + grain, without TensorFlow."""

from __future__ import annotations

import io
import itertools

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from noise_research.data import (
    BatchSource,
    DatasetNotPreparedError,
    TfdsGanImages,
    TfdsInputError,
    augmentation_rng,
    crop_and_resize_gan,
    gan_crop_box,
    open_encoded_image_source,
    open_image,
)

MOCK_EXAMPLES = 5
PNG_SIZES = ((40, 24), (24, 40), (33, 33), (50, 31))
"""(width, height) of the images of the prepared PNG data set."""
GAN_KEYS = {
    "name": "data.name",
    "split": "data.eval_split",
    "data_dir": "data.data_dir",
    "resolution": "data.resolution",
    "celeba_crop": "data.celeba_crop",
}


def _gan_images(name: str, split: str = "train", **kwargs) -> TfdsGanImages:
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("train", True)
    return TfdsGanImages(name, split, **kwargs)


def _signed(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) as float32 in [−1, 1]."""
    return image.astype(np.float32) / 127.5 - 1.0


def _lanczos(image: np.ndarray, box: tuple[int, int, int, int], side: int) -> np.ndarray:
    """The expected GAN image, written out here: the `box` window of a uint8 (H, W[, 1|3])
    image resized to side² with Pillow Lanczos, as (side, side, 3) RGB."""
    image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    window = Image.fromarray(image).crop(box)
    resized = np.asarray(window.resize((side, side), Image.Resampling.LANCZOS))
    return resized if resized.ndim == 3 else np.repeat(resized[..., None], 3, axis=-1)


def _centre_square(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    return ((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2)


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        yield


# ---------------------------------------------------------------- the batch contract (mock data)


@pytest.mark.parametrize(
    "name", ["cifar10", "celeb_a", "lsun/church_outdoor", "oxford_flowers102", "mnist"]
)
def test_batches_have_the_contract_shape_range_and_positions(mock_tfds, name):
    source = _gan_images(name, global_batch_size=4, resolution=16, random_flip=True)
    assert isinstance(source, BatchSource)
    batch = source.batch(3)
    assert set(batch) == {"image", "position"}
    chex.assert_shape(batch["image"], (4, 16, 16, 3))
    assert batch["image"].dtype == np.float32 and batch["position"].dtype == np.int32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["image"].std() > 0.05  # images, not a constant
    np.testing.assert_array_equal(batch["position"], [12, 13, 14, 15])
    if name == "mnist":  # gray, replicated to RGB
        np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])


def test_training_epochs_are_permutations_of_the_split(mock_tfds):
    # cifar10 at 32²: each training image is a source image as it is; each epoch visits all.
    raw = tfds.data_source("cifar10", split="train")
    originals = [_signed(raw[index]["image"]) for index in range(MOCK_EXAMPLES)]
    source = _gan_images("cifar10", global_batch_size=MOCK_EXAMPLES, resolution=32, seed=1)
    orders = []
    for step in (0, 1):
        images = source.batch(step)["image"]
        orders.append(
            [
                next(i for i, original in enumerate(originals) if np.array_equal(image, original))
                for image in images
            ]
        )
        assert sorted(orders[-1]) == list(range(MOCK_EXAMPLES))
    assert orders[0] != orders[1]  # reshuffled every epoch
    other_seed = _gan_images("cifar10", global_batch_size=MOCK_EXAMPLES, resolution=32, seed=2)
    assert not np.array_equal(other_seed.batch(0)["image"], source.batch(0)["image"])


def test_batch_is_a_pure_function_of_seed_step_and_process(mock_tfds):
    def celeb_a(**kwargs):
        kwargs.setdefault("seed", 2)
        return _gan_images("celeb_a", global_batch_size=4, resolution=8, random_flip=True, **kwargs)

    first, second = celeb_a(), celeb_a()
    # Built anew and asked out of order (a resumed run), the batches are the same.
    for step in (9, 2):
        chex.assert_trees_all_equal(first.batch(step), second.batch(step))
    assert not np.array_equal(first.batch(2)["image"], first.batch(3)["image"])
    assert not np.array_equal(first.batch(2)["image"], celeb_a(seed=3).batch(2)["image"])
    halves = [celeb_a(process_index=index, process_count=2).batch(9) for index in range(2)]
    for index, half in enumerate(halves):
        np.testing.assert_array_equal(half["position"], [36 + 2 * index, 37 + 2 * index])
    chex.assert_trees_all_equal(
        {key: np.concatenate([half[key] for half in halves]) for key in halves[0]},
        first.batch(9),
    )


def test_random_flip_mirrors_the_images_its_position_draws(mock_tfds):
    plain = _gan_images("cifar10", global_batch_size=5, resolution=32, seed=4)
    flipping = _gan_images("cifar10", global_batch_size=5, resolution=32, seed=4, random_flip=True)
    expected_flips = []
    for step in (0, 1):
        unflipped, batch = plain.batch(step), flipping.batch(step)
        for row, position in enumerate(batch["position"]):
            flipped = augmentation_rng(4, int(position)).random() < 0.5
            expected = unflipped["image"][row, :, ::-1] if flipped else unflipped["image"][row]
            np.testing.assert_array_equal(batch["image"][row], expected)
            expected_flips.append(flipped)
    assert set(expected_flips) == {False, True}


def test_eval_walks_the_split_once_in_order_with_a_mask(mock_tfds):
    # lsun/church_outdoor: random-size mock images, each the central square resized to 16².
    raw = tfds.data_source("lsun/church_outdoor", split="train")
    source = _gan_images(
        "lsun/church_outdoor",
        global_batch_size=4,
        resolution=16,
        train=False,
        random_flip=True,  # never applied to evaluation images
    )
    assert source.num_examples == MOCK_EXAMPLES and source.num_batches == 2
    batches = [source.batch(step) for step in range(2)]
    for step, batch in enumerate(batches):
        assert set(batch) == {"image", "position", "mask"} and batch["mask"].dtype == np.float32
        np.testing.assert_array_equal(batch["position"], range(4 * step, 4 * step + 4))
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]), [1] * 5 + [0] * 3)
    images = np.concatenate([b["image"] for b in batches])
    for row, index in enumerate([0, 1, 2, 3, 4, 0, 1, 2]):  # the padding repeats the start
        image = raw[index]["image"]
        box = _centre_square(image.shape[1], image.shape[0])
        np.testing.assert_array_equal(images[row], _signed(_lanczos(image, box, 16)))
    with pytest.raises(ValueError, match=r"step must be an integer in \[0, 1\], got 2"):
        source.batch(2)
    halves = [
        _gan_images(
            "lsun/church_outdoor",
            global_batch_size=4,
            resolution=16,
            train=False,
            process_index=index,
            process_count=2,
        ).batch(1)
        for index in range(2)
    ]
    chex.assert_trees_all_equal(
        {key: np.concatenate([half[key] for half in halves]) for key in halves[0]}, batches[1]
    )


@pytest.mark.parametrize("resolution", [32, 8])
def test_cifar10_is_kept_at_32_and_resized_otherwise(mock_tfds, resolution):
    raw = tfds.data_source("cifar10", split="test")
    source = _gan_images("cifar10", "test", global_batch_size=5, resolution=resolution, train=False)
    images = source.batch(0)["image"]
    for index in range(MOCK_EXAMPLES):
        expected = raw[index]["image"]
        if resolution != 32:
            expected = _lanczos(expected, (0, 0, 32, 32), resolution)
        np.testing.assert_array_equal(images[index], _signed(expected))


def test_celeb_a_source_uses_the_named_crop(mock_tfds):
    raw = tfds.data_source("celeb_a", split="test")[0]["image"]
    assert raw.shape == (218, 178, 3)
    for crop, box in (("dcgan_108", (35, 55, 143, 163)), ("square_178", (0, 20, 178, 198))):
        # 'CelebA' is TFDS's other spelling of celeb_a: it gets the celeb_a crop too.
        for name in ("celeb_a", "CelebA"):
            source = _gan_images(
                name, "test", global_batch_size=1, resolution=16, train=False, celeba_crop=crop
            )
            assert source.crop_name == crop
            np.testing.assert_array_equal(
                source.batch(0)["image"][0], _signed(_lanczos(raw, box, 16))
            )


def test_iterate_yields_exactly_the_batches_of_batch(mock_tfds):
    train = _gan_images("celeb_a", global_batch_size=2, resolution=8, seed=5, num_workers=2)
    batches = list(itertools.islice(train.iterate(1), 3))  # steps 1–3 cross two epochs
    for step, batch in enumerate(batches, start=1):
        chex.assert_trees_all_equal(batch, train.batch(step))
    evaluation = _gan_images("celeb_a", global_batch_size=2, resolution=8, train=False)
    batches = list(evaluation.iterate(1))  # to the end: batches 1 and 2
    assert len(batches) == evaluation.num_batches - 1 == 2
    for step, batch in enumerate(batches, start=1):
        chex.assert_trees_all_equal(batch, evaluation.batch(step))


# ---------------------------------------------------------------- preprocessing functions


@pytest.mark.parametrize(
    "crop, rows, columns",
    [
        ("dcgan_108", slice(55, 163), slice(35, 143)),  # the central 108²
        ("progan_128", slice(57, 185), slice(25, 153)),  # 128² centred on (x 89, y 121)
        ("square_178", slice(20, 198), slice(0, 178)),  # the central 178²
    ],
)
def test_celeb_a_crops_are_the_named_windows(crop, rows, columns):
    image = np.random.default_rng(0).integers(0, 256, (218, 178, 3), dtype=np.uint8)
    box = gan_crop_box("celeb_a", 178, 218, crop)
    side = rows.stop - rows.start
    # At the window's own size nothing is resampled: the output is the window, pixel for pixel.
    window = crop_and_resize_gan(Image.fromarray(image), box, side)
    np.testing.assert_array_equal(window, image[rows, columns])


def test_celeb_a_default_crop_is_the_centre_and_nothing_outside_it_leaks_in():
    # The central 108² is one colour; everything else, the ring around it included, another.
    image = np.full((218, 178, 3), 255, np.uint8)
    image[55:163, 35:143] = (200, 40, 90)
    for side in (64, 32, 4):
        resized = crop_and_resize_gan(
            Image.fromarray(image), gan_crop_box("celeb_a", 178, 218), side
        )
        np.testing.assert_array_equal(resized, np.broadcast_to([200, 40, 90], (side, side, 3)))
    with pytest.raises(ValueError, match=r"celeb_a images must be 178 × 218.*got 200 × 218"):
        gan_crop_box("celeb_a", 200, 218)


def test_other_data_sets_get_the_central_square_and_gray_becomes_rgb():
    assert gan_crop_box("lsun", 340, 256) == (42, 0, 298, 256)
    assert gan_crop_box("oxford_flowers102", 500, 667) == (0, 83, 500, 583)
    assert gan_crop_box("cifar10", 32, 32) == (0, 0, 32, 32)
    gray = np.random.default_rng(1).integers(0, 256, (30, 50), dtype=np.uint8)
    for value in (gray, gray[..., None], _encode_png(gray)):
        image = crop_and_resize_gan(open_image(value), (10, 0, 40, 30), 8)
        assert image.shape == (8, 8, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, _lanczos(gray, (10, 0, 40, 30), 8))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("resolution", [48, 2, 0, -4, 8.0, True])
def test_bad_resolutions_are_named(mock_tfds, resolution):
    with pytest.raises(TfdsInputError) as error:
        _gan_images("cifar10", global_batch_size=2, resolution=resolution)
    assert str(error.value) == (
        f"resolution={resolution!r}: the image side must be a power of two >= 4 "
        "(4, 8, 16, ..., 1024)"
    )
    with pytest.raises(TfdsInputError, match=rf"^config\.data\.resolution = {resolution!r}: "):
        _gan_images("cifar10", global_batch_size=2, resolution=resolution, config_keys=GAN_KEYS)


def test_unknown_data_sets_crops_and_features_are_named(mock_tfds):
    cases = [
        ({"name": "celeba"}, r"^config\.data\.name = 'celeba': .*did you mean 'celeb_a'"),
        ({"name": "lsun/church"}, r"^config\.data\.name = 'lsun/church': .*no config 'church'"),
        (
            {"name": "celeb_a", "celeba_crop": "centre"},
            r"^config\.data\.celeba_crop = 'centre': not a named celeb_a crop; the crops: "
            r"'dcgan_108', 'progan_128', 'square_178'$",
        ),
        ({"name": "cifar10", "image_key": "picture"}, r"^image_key='picture': .*'image'"),
    ]
    for arguments, message in cases:
        name = arguments.pop("name")
        with pytest.raises(TfdsInputError, match=message) as error:
            _gan_images(name, global_batch_size=2, resolution=8, config_keys=GAN_KEYS, **arguments)
        assert "\n" not in str(error.value)


def test_data_set_not_prepared_says_how_to_prepare_it(tmp_path):
    with pytest.raises(DatasetNotPreparedError) as error:
        _gan_images(
            "celeb_a", global_batch_size=2, resolution=8, data_dir=tmp_path, config_keys=GAN_KEYS
        )
    message = str(error.value)
    assert message.startswith("config.data.name = 'celeb_a': ")
    assert f"tfds build celeb_a --data_dir={tmp_path} --file_format=array_record" in message


# ---------------------------------------------------------------- a prepared array_record set


class NoiseResearchGanPngs(tfds.core.GeneratorBasedBuilder):
    """Random RGB images of `PNG_SIZES` stored as PNG bytes, one 'train' split (writing encoded
    bytes needs no TensorFlow)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"image": tfds.features.Image(shape=(None, None, 3), encoding_format="png")}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for index, (width, height) in enumerate(PNG_SIZES):
            yield index, {"image": _encode_png(_png_image(index, width, height))}


def _png_image(index: int, width: int, height: int) -> np.ndarray:
    return np.random.default_rng(index).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def png_data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("gan_pngs")
    NoiseResearchGanPngs(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_prepared_png_images_are_centre_squares_in_order(png_data_dir):
    source = _gan_images(
        "noise_research_gan_pngs",
        global_batch_size=4,
        resolution=16,
        train=False,
        data_dir=png_data_dir,
    )
    assert source.crop_name is None and source.num_batches == 1
    # TFDS stores the examples shuffled; each image's size says which one it is.
    raw = open_encoded_image_source("noise_research_gan_pngs", "train", png_data_dir, "image")
    images = source.batch(0)["image"]
    for row in range(len(PNG_SIZES)):
        stored = raw[row]["image"]
        assert isinstance(stored, bytes) and stored.startswith(b"\x89PNG")
        index = PNG_SIZES.index(Image.open(io.BytesIO(stored)).size)
        width, height = PNG_SIZES[index]
        expected = _lanczos(_png_image(index, width, height), _centre_square(width, height), 16)
        np.testing.assert_array_equal(images[row], _signed(expected))


def test_missing_split_is_named_with_the_splits_there_are(png_data_dir):
    with pytest.raises(
        TfdsInputError,
        match=r"^config\.data\.eval_split = 'validation': TFDS dataset 'noise_research_gan_pngs' "
        r"has no split 'validation'; its splits: 'train' ",
    ):
        _gan_images(
            "noise_research_gan_pngs",
            "validation",
            global_batch_size=2,
            resolution=8,
            train=False,
            data_dir=png_data_dir,
            config_keys=GAN_KEYS,
        )
