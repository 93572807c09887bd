"""Tests for the classification batch sources: scikit-learn digits, TFDS (mock data and a real
array_record set of JPEGs) + grain, the Pillow augmentation and the parallel `iterate`."""

import dataclasses
import io
import itertools
import multiprocessing
import time

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from noise_research.data import (
    BatchSource,
    DatasetNotPreparedError,
    DigitsBatches,
    TfdsClassificationBatches,
    crop_and_resize,
    digits_split,
    digits_split_indices,
    eval_crop_box,
    eval_preprocessing,
    open_encoded_image_source,
    open_image,
    pad_and_random_crop,
    random_resized_crop_box,
    train_augmentation,
    worker_batches,
)

MOCK_EXAMPLES = 5
JPEG_SIZES = ((800, 600), (600, 800), (120, 90), (90, 120), (333, 500))
"""(width, height) of the coordinate-ramp JPEGs of the tiny array_record data set."""


def _digits(global_batch_size: int, **kwargs) -> DigitsBatches:
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    return DigitsBatches(global_batch_size, **kwargs)


def _all_translations(image: np.ndarray, max_shift: int) -> list[np.ndarray]:
    """`image` (H, W, C) shifted by every (dy, dx) in [−max_shift, max_shift]², zero fill."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    return [
        padded[top : top + height, left : left + width]
        for top in range(2 * max_shift + 1)
        for left in range(2 * max_shift + 1)
    ]


def _check_batch_contract(batch: dict, image_side: int, positions: range) -> None:
    """The batch dict of the contract, whose rows are at global `positions`: digits float32 in
    [0, 1], TFDS sets uint8 (0…255)."""
    size = len(positions)
    assert set(batch) == {"image", "label", "mask", "position"}
    chex.assert_shape(batch["image"], (size, image_side, image_side, 3))
    chex.assert_shape([batch["label"], batch["mask"], batch["position"]], (size,))
    assert batch["image"].dtype in (np.float32, np.uint8) and batch["label"].dtype == np.int32
    assert batch["position"].dtype == np.int32
    np.testing.assert_array_equal(batch["position"], positions)
    if batch["image"].dtype == np.float32:
        assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0


def _rgb(image: np.ndarray) -> np.ndarray:
    """A uint8 (H, W[, 1|3]) image as (H, W, 3) uint8."""
    image = image if image.ndim == 3 else image[..., None]
    return np.broadcast_to(image, (*image.shape[:2], 3))


# ---------------------------------------------------------------- digits


def test_digits_split_is_fixed_disjoint_and_complete():
    train_indices, test_indices = digits_split_indices()
    assert len(train_indices) == 1500 and len(test_indices) == 297
    assert not set(train_indices) & set(test_indices)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([train_indices, test_indices])), range(1797)
    )
    np.testing.assert_array_equal(digits_split_indices()[1], test_indices)
    images, labels = digits_split(False, 16)
    chex.assert_shape(images, (297, 16, 16, 1))
    assert set(np.unique(labels)) == set(range(10))


def test_digits_train_batch_contract_and_determinism():
    source = _digits(8, train=True, seed=3)
    assert isinstance(source, BatchSource)
    batch = source.batch(0)
    _check_batch_contract(batch, 32, range(8))
    np.testing.assert_array_equal(batch["mask"], 1.0)
    np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])  # gray as RGB
    assert source.max_shift == 8  # 2 px at 8×8 is 8 px at 32×32
    # Built anew and asked out of order (a resumed run), the batches are the same.
    again = _digits(8, train=True, seed=3)
    for step in (250, 1):
        chex.assert_trees_all_equal(again.batch(step), source.batch(step))
    assert not np.array_equal(source.batch(1)["image"], source.batch(2)["image"])
    other_seed = _digits(8, train=True, seed=4)
    assert not np.array_equal(other_seed.batch(1)["image"], source.batch(1)["image"])


def test_digits_training_epoch_is_a_permutation_of_translated_train_images():
    # At 8×8 the translation is up to 2 px; every training image must be a translation of a train
    # image with the same label, and one epoch must hold every label as often as the split does.
    train_images, train_labels = digits_split(True, 8)
    label_of_translation = {}
    for image, label in zip(train_images, train_labels, strict=True):
        for shifted in _all_translations(image, 2):
            label_of_translation.setdefault(shifted.tobytes(), set()).add(int(label))
    source = _digits(300, train=True, image_size=8, seed=1)
    epochs = []
    for epoch in range(2):
        batches = [source.batch(step) for step in range(5 * epoch, 5 * epoch + 5)]
        images = np.concatenate([batch["image"][..., :1] for batch in batches])
        labels = np.concatenate([batch["label"] for batch in batches])
        for image, label in zip(images, labels, strict=True):
            assert label in label_of_translation[image.tobytes()]
        np.testing.assert_array_equal(np.bincount(labels), np.bincount(train_labels))
        epochs.append(labels)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch


def test_digits_eval_walks_the_test_split_in_order_with_a_padding_mask():
    test_images, test_labels = digits_split(False, 32)
    source = _digits(64, train=False)
    assert source.num_examples == 297 and source.num_batches == 5
    batches = [source.batch(step) for step in range(source.num_batches)]
    for step, batch in enumerate(batches):
        _check_batch_contract(batch, 32, range(64 * step, 64 * step + 64))
    images = np.concatenate([batch["image"] for batch in batches])
    labels = np.concatenate([batch["label"] for batch in batches])
    mask = np.concatenate([batch["mask"] for batch in batches])
    np.testing.assert_array_equal(mask, [1.0] * 297 + [0.0] * 23)
    np.testing.assert_array_equal(images[:297, ..., 0], test_images[..., 0])
    np.testing.assert_array_equal(labels[:297], test_labels)
    np.testing.assert_array_equal(labels[297:], test_labels[:23])  # padding repeats examples
    with pytest.raises(ValueError, match=r"step must be an integer in \[0, 4\], got 5"):
        source.batch(5)


@pytest.mark.parametrize("train", [True, False])
def test_digits_global_batch_is_the_same_for_any_process_count(train):
    step = 37 if train else 2
    global_batches = []
    for process_count in (1, 2, 4):
        shards = [
            _digits(
                8, train=train, image_size=8, process_index=index, process_count=process_count
            ).batch(step)
            for index in range(process_count)
        ]
        share = 8 // process_count
        for index, shard in enumerate(shards):
            first = 8 * step + index * share
            _check_batch_contract(shard, 8, range(first, first + share))
        global_batches.append({key: np.concatenate([s[key] for s in shards]) for key in shards[0]})
    chex.assert_trees_all_equal(*global_batches)


def test_digits_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="train must be True or False, got 'yes'"):
        _digits(8, train="yes")
    with pytest.raises(ValueError, match="image_size must be an integer >= 1, got 0"):
        _digits(8, train=True, image_size=0)
    with pytest.raises(ValueError, match="global_batch_size=6 does not divide by process_count=4"):
        _digits(6, train=True, process_index=0, process_count=4)


# ---------------------------------------------------------------- Pillow augmentation


def _coordinate_image(width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 ramps: red = 255·x / width and green = 255·y / height at pixel
    centres (x, y), blue constant; a window's pixels then say where the window lies."""
    image = np.full((height, width, 3), 128, np.uint8)
    image[..., 0] = np.round(255 * (np.arange(width) + 0.5) / width)[None, :]
    image[..., 1] = np.round(255 * (np.arange(height) + 0.5) / height)[:, None]
    return image


def _encode(image: np.ndarray, image_format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 95, "subsampling": 0} if image_format == "JPEG" else {}
    Image.fromarray(image).save(buffer, image_format, **options)
    return buffer.getvalue()


def _assert_is_window(
    crop: np.ndarray, box: tuple, width: int, height: int, flipped: bool = False
) -> None:
    """`crop` (S, S, 3) uint8 of a `_coordinate_image` is its `box` window resized to S², mirrored
    if `flipped`, within JPEG and resampling error (borders, where filters are cut, excluded)."""
    size = crop.shape[0]
    left, top, right, bottom = box
    red = 255 * (left + (np.arange(size) + 0.5) * (right - left) / size) / width
    green = 255 * (top + (np.arange(size) + 0.5) * (bottom - top) / size) / height
    red = red[::-1] if flipped else red
    inner = slice(1, size - 1)
    np.testing.assert_allclose(crop[inner, inner, 0], np.tile(red[inner], (size - 2, 1)), atol=3)
    np.testing.assert_allclose(
        crop[inner, inner, 1].T, np.tile(green[inner], (size - 2, 1)), atol=3
    )


def test_random_resized_crop_box_draws_inception_windows_and_falls_back_to_the_centre():
    rng = np.random.default_rng(0)
    boxes = np.array([random_resized_crop_box(500, 375, rng) for _ in range(400)])
    left, top, right, bottom = boxes.T
    assert left.min() >= 0 and top.min() >= 0 and right.max() <= 500 and bottom.max() <= 375
    areas = (right - left) * (bottom - top) / (500 * 375)
    ratios = (right - left) / (bottom - top)
    assert areas.min() >= 0.079 and areas.max() <= 1.0 and 0.4 < areas.mean() < 0.6
    assert ratios.min() >= 0.74 and ratios.max() <= 1.34
    assert np.log(ratios).min() < -0.2 and np.log(ratios).max() > 0.2  # both orientations drawn
    assert left.max() > 250 and top.max() > 150  # windows anywhere, not only at the origin
    # A 200 × 2 strip fits no 3/4–4/3 window of ≥ 8% area: the central 3 × 2 window is used.
    assert random_resized_crop_box(200, 2, rng) == (98, 0, 101, 2)


@pytest.mark.parametrize("image_size", [32, 160])
def test_training_crop_is_the_drawn_window_mirrored_by_the_drawn_flip(image_size):
    width, height = 800, 600
    jpeg = _encode(_coordinate_image(width, height))
    flips = set()
    for seed in range(6):
        draws = np.random.default_rng(seed)  # the draws train_augmentation makes, in its order
        box = random_resized_crop_box(width, height, draws)
        flipped = bool(draws.random() < 0.5)
        crop = train_augmentation(open_image(jpeg), image_size, False, np.random.default_rng(seed))
        assert crop.shape == (image_size, image_size, 3) and crop.dtype == np.uint8
        _assert_is_window(crop, box, width, height, flipped)
        flips.add(flipped)
    assert flips == {False, True}


def test_jpeg_is_decoded_at_the_reduced_scale_the_window_allows():
    jpeg = _encode(_coordinate_image(800, 600))
    image = open_image(jpeg)
    crop = crop_and_resize(image, (400, 300, 800, 600), 32)  # a 400 × 300 window shrunk ≥ 9×
    assert image.size == (100, 75)  # decoded at 1/8 scale
    _assert_is_window(np.asarray(crop), (400, 300, 800, 600), 800, 600)
    image = open_image(jpeg)
    crop_and_resize(image, (0, 0, 800, 600), 400)  # shrunk only 1.5× vertically
    assert image.size == (800, 600)


@pytest.mark.parametrize(
    "width, height, expected_box",
    [
        # 800 × 600 → 85 × 64 (short side 64 = 56·256/224), central 56² at (14, 4).
        (800, 600, (14 * 800 / 85, 4 * 600 / 64, 70 * 800 / 85, 60 * 600 / 64)),
        # 90 × 120 → 64 × 85 (upscaled), central 56² at (4, 14).
        (90, 120, (4 * 90 / 64, 14 * 120 / 85, 60 * 90 / 64, 70 * 120 / 85)),
    ],
)
def test_eval_crop_is_the_centre_of_the_short_side_resized_image(width, height, expected_box):
    np.testing.assert_allclose(eval_crop_box(width, height, 56), expected_box)
    crop = eval_preprocessing(open_image(_encode(_coordinate_image(width, height))), 56, False)
    assert crop.shape == (56, 56, 3)
    _assert_is_window(crop, expected_box, width, height)


def test_gray_palette_and_alpha_images_become_rgb():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    rgba = Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8))
    palette = rgba.convert("RGB").convert("P")
    for value in (gray, gray[..., None], _encode(gray), _encode(gray, "PNG")):
        crop = train_augmentation(open_image(value), 16, False, np.random.default_rng(1))
        assert crop.shape == (16, 16, 3)
        np.testing.assert_array_equal(crop[..., 0], crop[..., 2])
    for image in (palette, rgba):
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        crop = eval_preprocessing(open_image(buffer.getvalue()), 16, False)
        assert crop.shape == (16, 16, 3) and crop.dtype == np.uint8
    with pytest.raises(ValueError, match="must be uint8"):
        open_image(gray.astype(np.float32))


def test_pad_and_random_crop_is_a_translation_within_the_padding():
    image = np.random.default_rng(0).uniform(size=(6, 7, 3)).astype(np.float32)
    candidates = _all_translations(image, 2)
    for seed in range(10):
        crop = pad_and_random_crop(image, 2, np.random.default_rng(seed))
        assert any(np.array_equal(crop, candidate) for candidate in candidates)


# ---------------------------------------------------------------- the parallel pipeline


@dataclasses.dataclass
class _Squares:
    """A picklable step-indexed source; step `fail_at` raises in the worker."""

    fail_at: int = -1

    def batch(self, step: int) -> dict[str, np.ndarray]:
        if step == self.fail_at:
            raise RuntimeError(f"batch {step} failed")
        positions = np.arange(4 * step, 4 * step + 4, dtype=np.int32)
        return {"position": positions, "square": positions.astype(np.float32) ** 2}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_worker_batches_are_the_batches_in_step_order_and_stop_on_error(num_workers):
    batches = worker_batches(_Squares(fail_at=7).batch, range(3, 9), num_workers)
    for step in range(3, 7):  # workers interleave the steps; they come out in order
        np.testing.assert_array_equal(
            next(batches)["square"], (np.arange(4 * step, 4 * step + 4)) ** 2
        )
    with pytest.raises(Exception, match="batch 7 failed"):  # a worker's error, re-raised here
        next(batches)


def test_closing_worker_batches_stops_the_worker_processes():
    batches = worker_batches(_Squares().batch, range(0, 10**9), 2)
    next(batches)
    assert len(multiprocessing.active_children()) >= 2
    batches.close()
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()


# ---------------------------------------------------------------- TFDS (mock data)


def _tfds_batches(
    name: str = "cifar10", split: str = "train", **kwargs
) -> TfdsClassificationBatches:
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("num_workers", 2)
    return TfdsClassificationBatches(name, split, **kwargs)


def _assert_batches_equal(first: dict, second: dict) -> None:
    assert set(first) == set(second)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        yield


def test_cifar10_training_is_pad_crop_and_flip_of_source_images(mock_tfds):
    raw = tfds.data_source("cifar10", split="train")
    candidates = {
        (index, flipped): _all_translations(image[:, ::-1] if flipped else image, 4)
        for index in range(MOCK_EXAMPLES)
        for flipped in (False, True)
        for image in [_rgb(raw[index]["image"])]
    }
    source = _tfds_batches(global_batch_size=5, image_size=32, train=True)
    assert source.small_images and isinstance(source, BatchSource)
    batch = source.batch(0)
    _check_batch_contract(batch, 32, range(5))
    np.testing.assert_array_equal(batch["mask"], 1.0)
    matched_sources, flips = [], set()
    for image, label in zip(batch["image"], batch["label"], strict=True):
        matches = [
            key
            for key, translations in candidates.items()
            if any(np.array_equal(image, t) for t in translations)
        ]
        assert matches and all(raw[index]["label"] == label for index, _ in matches)
        matched_sources.append(matches[0][0])
        flips.update(flipped for _, flipped in matches)
    assert sorted(matched_sources) == list(range(MOCK_EXAMPLES))  # one epoch = a permutation
    assert flips == {False, True}
    _assert_batches_equal(next(source.iterate(0)), batch)


def test_tfds_training_is_deterministic_and_splits_over_processes(mock_tfds):
    first = _tfds_batches(global_batch_size=4, image_size=16, train=True, seed=2)
    second = _tfds_batches(global_batch_size=4, image_size=16, train=True, seed=2)
    chex.assert_trees_all_equal(first.batch(9), second.batch(9))
    assert not np.array_equal(first.batch(1)["image"], first.batch(2)["image"])
    shards = [
        _tfds_batches(
            global_batch_size=4,
            image_size=16,
            train=True,
            seed=2,
            process_index=index,
            process_count=2,
        )
        for index in range(2)
    ]
    for index, shard in enumerate(shards):
        _check_batch_contract(shard.batch(9), 16, range(36 + 2 * index, 38 + 2 * index))
        _assert_batches_equal(next(shard.iterate(9)), shard.batch(9))
    chex.assert_trees_all_equal(
        {key: np.concatenate([s.batch(9)[key] for s in shards]) for key in shards[0].batch(9)},
        first.batch(9),
    )


def test_cifar10_eval_is_in_order_with_padding_mask(mock_tfds):
    raw = tfds.data_source("cifar10", split="test")
    source = _tfds_batches("cifar10", "test", global_batch_size=4, image_size=32, train=False)
    assert source.num_batches == 2
    batches = [source.batch(step) for step in range(2)]
    for step, batch in enumerate(batches):
        _check_batch_contract(batch, 32, range(4 * step, 4 * step + 4))
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]), [1] * 5 + [0] * 3)
    order = [0, 1, 2, 3, 4, 0, 1, 2]
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    for image, label, index in zip(images, labels, order, strict=True):
        np.testing.assert_array_equal(image, _rgb(raw[index]["image"]))
        assert label == raw[index]["label"]
    with pytest.raises(ValueError, match=r"step must be an integer in \[0, 1\], got 2"):
        source.batch(2)


def test_imagenet_sized_data_uses_random_resized_crop_and_centre_crop(mock_tfds):
    train = _tfds_batches("imagenet2012", global_batch_size=2, image_size=16, train=True)
    assert not train.small_images
    _check_batch_contract(train.batch(3), 16, range(6, 8))
    evaluation = _tfds_batches(
        "imagenet2012", "validation", global_batch_size=2, image_size=16, train=False
    )
    batch = evaluation.batch(0)
    _check_batch_contract(batch, 16, range(2))
    first_image = tfds.data_source("imagenet2012", split="validation")[0]["image"]
    np.testing.assert_array_equal(
        batch["image"][0], _rgb(eval_preprocessing(open_image(first_image), 16, False))
    )


def test_tfds_unknown_keys_and_bad_worker_counts_are_reported(mock_tfds):
    with pytest.raises(ValueError, match=r"label_key='class'.*'label'"):
        _tfds_batches(global_batch_size=2, image_size=32, train=True, label_key="class")
    with pytest.raises(ValueError, match=r"image_key='picture'.*'image'"):
        _tfds_batches(global_batch_size=2, image_size=32, train=True, image_key="picture")
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0, got -1"):
        _tfds_batches(global_batch_size=2, image_size=32, train=True, num_workers=-1)


def test_tfds_missing_dataset_reuses_the_not_prepared_error(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match="tfds build cifar10"):
        _tfds_batches(global_batch_size=2, image_size=32, train=True, data_dir=tmp_path)


# ---------------------------------------------------------------- TFDS (array_record JPEGs)


class NoiseResearchTinyJpegs(tfds.core.GeneratorBasedBuilder):
    """`_coordinate_image`s of `JPEG_SIZES` stored as JPEG bytes, label = size index (writing
    encoded bytes needs no TensorFlow)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=len(JPEG_SIZES)),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for label, (width, height) in enumerate(JPEG_SIZES):
            yield label, {"image": _encode(_coordinate_image(width, height)), "label": label}


@pytest.fixture(scope="module")
def jpeg_data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tiny_jpegs")
    NoiseResearchTinyJpegs(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def _jpeg_batches(data_dir, **kwargs) -> TfdsClassificationBatches:
    return _tfds_batches("noise_research_tiny_jpegs", "train", data_dir=data_dir, **kwargs)


def test_array_record_images_are_read_as_their_jpeg_bytes(jpeg_data_dir):
    source = open_encoded_image_source("noise_research_tiny_jpegs", "train", jpeg_data_dir, "image")
    for example in source:
        assert isinstance(example["image"], bytes) and example["image"][:2] == b"\xff\xd8"
        assert Image.open(io.BytesIO(example["image"])).size == JPEG_SIZES[example["label"]]


def test_eval_batches_of_jpegs_are_centre_crops_in_order(jpeg_data_dir):
    raw = open_encoded_image_source("noise_research_tiny_jpegs", "train", jpeg_data_dir, "image")
    source = _jpeg_batches(jpeg_data_dir, global_batch_size=3, image_size=24, train=False)
    assert source.num_batches == 2 and source.num_classes == len(JPEG_SIZES)
    images = np.concatenate([source.batch(step)["image"] for step in range(2)])
    for row, index in enumerate([0, 1, 2, 3, 4, 0]):
        expected = eval_preprocessing(open_image(raw[index]["image"]), 24, False)
        np.testing.assert_array_equal(images[row], _rgb(expected))


@pytest.mark.parametrize("train", [True, False])
def test_iterate_yields_exactly_the_batches_of_batch(jpeg_data_dir, train):
    source = _jpeg_batches(jpeg_data_dir, global_batch_size=2, image_size=24, train=train, seed=5)
    # Training: steps 1–3 cross two epochs of the 5 examples; evaluation: steps 1–2 and the end.
    batches = list(itertools.islice(source.iterate(1), 3))
    assert len(batches) == 3 if train else len(batches) == source.num_batches - 1 == 2
    for step, batch in enumerate(batches, start=1):
        _check_batch_contract(batch, 24, range(2 * step, 2 * step + 2))
        _assert_batches_equal(batch, source.batch(step))
    assert not np.array_equal(batches[0]["image"], batches[1]["image"])
