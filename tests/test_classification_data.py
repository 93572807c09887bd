"""Tests for the classification batch sources: scikit-learn digits, TFDS (mock data) + grain."""

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds

from noise_research.data import (
    BatchSource,
    DatasetNotPreparedError,
    DigitsBatches,
    TfdsClassificationBatches,
    digits_split,
    digits_split_indices,
    pad_and_random_crop,
    random_resized_crop,
    resize_and_center_crop,
    to_rgb_unit,
)

MOCK_EXAMPLES = 5


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


def _check_batch_contract(batch: dict, size: int, image_side: int) -> None:
    assert set(batch) == {"image", "label", "mask"}
    chex.assert_shape(batch["image"], (size, image_side, image_side, 3))
    chex.assert_shape([batch["label"], batch["mask"]], (size,))
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0


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
    _check_batch_contract(batch, 8, 32)
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
    for batch in batches:
        _check_batch_contract(batch, 64, 32)
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
    global_batches = []
    for process_count in (1, 2, 4):
        shards = [
            _digits(
                8, train=train, image_size=8, process_index=index, process_count=process_count
            ).batch(37 if train else 2)
            for index in range(process_count)
        ]
        for shard in shards:
            _check_batch_contract(shard, 8 // process_count, 8)
        global_batches.append({key: np.concatenate([s[key] for s in shards]) for key in shards[0]})
    chex.assert_trees_all_equal(*global_batches)


def test_digits_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="train must be True or False, got 'yes'"):
        _digits(8, train="yes")
    with pytest.raises(ValueError, match="image_size must be an integer >= 1, got 0"):
        _digits(8, train=True, image_size=0)
    with pytest.raises(ValueError, match="global_batch_size=6 does not divide by process_count=4"):
        _digits(6, train=True, process_index=0, process_count=4)


# ---------------------------------------------------------------- augmentation functions


def test_to_rgb_unit_replicates_gray_and_scales_to_unit():
    gray = np.array([[0, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_unit(gray), [[[0.0] * 3, [1.0] * 3]])
    with pytest.raises(ValueError, match="must be uint8"):
        to_rgb_unit(gray.astype(np.float32))


def test_pad_and_random_crop_is_a_translation_within_the_padding():
    image = np.random.default_rng(0).uniform(size=(6, 7, 3)).astype(np.float32)
    candidates = _all_translations(image, 2)
    for seed in range(10):
        crop = pad_and_random_crop(image, 2, np.random.default_rng(seed))
        assert any(np.array_equal(crop, candidate) for candidate in candidates)


def test_random_resized_crop_shapes_and_fallback_for_extreme_aspect_ratios():
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(30, 40, 3)).astype(np.float32)
    chex.assert_shape(random_resized_crop(image, 16, rng), (16, 16, 3))
    # A 2 × 200 strip fits no 3/4–4/3 window of ≥ 8% area: the central 2 × 3 window is used.
    strip = np.tile(np.linspace(0, 1, 200, dtype=np.float32)[None, :, None], (2, 1, 3))
    crop = random_resized_crop(strip, 4, rng)
    chex.assert_shape(crop, (4, 4, 3))
    assert crop.min() > 0.48 and crop.max() < 0.52


def test_resize_and_center_crop_keeps_the_centre():
    # Left half black, right half white, 100 × 200: short side → 64, crop 56 from the middle.
    image = np.zeros((100, 200, 3), np.float32)
    image[:, 100:] = 1.0
    crop = resize_and_center_crop(image, 56)
    chex.assert_shape(crop, (56, 56, 3))
    np.testing.assert_allclose(crop[:, :20], 0.0, atol=1e-6)
    np.testing.assert_allclose(crop[:, -20:], 1.0, atol=1e-6)


# ---------------------------------------------------------------- TFDS


def _tfds_batches(
    name: str = "cifar10", split: str = "train", **kwargs
) -> TfdsClassificationBatches:
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    kwargs.setdefault("seed", 0)
    return TfdsClassificationBatches(name, split, **kwargs)


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
        for image in [to_rgb_unit(raw[index]["image"])]
    }
    source = _tfds_batches(global_batch_size=5, image_size=32, train=True)
    assert source.small_images and isinstance(source, BatchSource)
    batch = source.batch(0)
    _check_batch_contract(batch, 5, 32)
    np.testing.assert_array_equal(batch["mask"], 1.0)
    matched_sources = []
    for image, label in zip(batch["image"], batch["label"], strict=True):
        matches = [
            key
            for key, translations in candidates.items()
            if any(np.array_equal(image, t) for t in translations)
        ]
        assert matches and all(raw[index]["label"] == label for index, _ in matches)
        matched_sources.append(matches[0][0])
    assert sorted(matched_sources) == list(range(MOCK_EXAMPLES))  # one epoch = a permutation


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
        ).batch(9)
        for index in range(2)
    ]
    chex.assert_trees_all_equal(
        {key: np.concatenate([s[key] for s in shards]) for key in shards[0]}, first.batch(9)
    )


def test_cifar10_eval_is_in_order_with_padding_mask(mock_tfds):
    raw = tfds.data_source("cifar10", split="test")
    source = _tfds_batches("cifar10", "test", global_batch_size=4, image_size=32, train=False)
    assert source.num_batches == 2
    batches = [source.batch(step) for step in range(2)]
    for batch in batches:
        _check_batch_contract(batch, 4, 32)
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]), [1] * 5 + [0] * 3)
    order = [0, 1, 2, 3, 4, 0, 1, 2]
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    for image, label, index in zip(images, labels, order, strict=True):
        np.testing.assert_array_equal(image, to_rgb_unit(raw[index]["image"]))
        assert label == raw[index]["label"]


def test_imagenet_sized_data_uses_random_resized_crop_and_centre_crop(mock_tfds):
    train = _tfds_batches("imagenet2012", global_batch_size=2, image_size=16, train=True)
    assert not train.small_images
    _check_batch_contract(train.batch(3), 2, 16)
    evaluation = _tfds_batches(
        "imagenet2012", "validation", global_batch_size=2, image_size=16, train=False
    )
    batch = evaluation.batch(0)
    _check_batch_contract(batch, 2, 16)
    first_image = to_rgb_unit(tfds.data_source("imagenet2012", split="validation")[0]["image"])
    np.testing.assert_array_equal(batch["image"][0], resize_and_center_crop(first_image, 16))


def test_tfds_unknown_label_key_is_reported(mock_tfds):
    with pytest.raises(ValueError, match=r"label_key='class'.*'label'"):
        _tfds_batches(global_batch_size=2, image_size=32, train=True, label_key="class")


def test_tfds_missing_dataset_reuses_the_not_prepared_error(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match="tfds build cifar10"):
        _tfds_batches(global_batch_size=2, image_size=32, train=True, data_dir=tmp_path)
